// libtorch from the PyTorch wheel and Debian's gRPC + protobuf live in one binary:
// same C++ ABI, and protobuf's symbols come from Debian's libprotobuf, not from a
// copy inside libtorch. If either were wrong this would fail to link, abort at
// start-up (duplicate descriptor registration), or corrupt the round trip.
#include <dlfcn.h>

#include <map>
#include <mutex>

#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "herd/proto/herd.grpc.pb.h"

namespace {

class KvOnly final : public herd::v1::Coordinator::Service {
 public:
  grpc::Status KvSet(grpc::ServerContext*, const herd::v1::KvSetRequest* req, herd::v1::KvSetResponse*) override {
    std::lock_guard lock(mutex_);
    store_[req->key()] = req->value();
    return grpc::Status::OK;
  }
  grpc::Status KvGet(grpc::ServerContext*, const herd::v1::KvGetRequest* req, herd::v1::KvGetResponse* resp) override {
    std::lock_guard lock(mutex_);
    auto it = store_.find(req->key());
    resp->set_found(it != store_.end());
    if (it != store_.end()) resp->set_value(it->second);
    return grpc::Status::OK;
  }

 private:
  std::mutex mutex_;
  std::map<std::string, std::string> store_;
};

std::string library_of(const void* symbol) {
  Dl_info info{};
  if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return "";
  return info.dli_fname;
}

TEST(TorchGrpcAbi, SameCxxAbi) {
  // The wheel is built with the C++11 ABI since torch 2.7, as Debian's libraries are.
  EXPECT_EQ(_GLIBCXX_USE_CXX11_ABI, 1);
  // A std::string made inside libtorch is usable here.
  std::string s = torch::ones({2}).toString();
  EXPECT_NE(s.find("Float"), std::string::npos) << s;
}

TEST(TorchGrpcAbi, ProtobufComesFromDebiansLibrary) {
  EXPECT_EQ(GOOGLE_PROTOBUF_VERSION / 1000000, 3);  // protobuf 3.21 headers
  // The runtime version check aborts on a header/library mismatch.
  GOOGLE_PROTOBUF_VERIFY_VERSION;
  std::string where = library_of(reinterpret_cast<const void*>(&google::protobuf::ShutdownProtobufLibrary));
  EXPECT_NE(where.find("libprotobuf.so"), std::string::npos) << where;
  EXPECT_EQ(where.find("torch"), std::string::npos) << where;
}

TEST(TorchGrpcAbi, TensorRoundTripsThroughALoopbackRpc) {
  KvOnly service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(port, 0);

  auto stub = herd::v1::Coordinator::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  torch::manual_seed(7);
  torch::Tensor sent = torch::randn({64, 33}, torch::kFloat32);
  herd::v1::KvSetRequest set;
  set.set_key("tensor");
  set.set_value(std::string(static_cast<const char*>(sent.data_ptr()), sent.nbytes()));
  herd::v1::KvSetResponse set_reply;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->KvSet(&ctx, set, &set_reply).ok());
  }
  herd::v1::KvGetRequest get;
  get.set_key("tensor");
  herd::v1::KvGetResponse got;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->KvGet(&ctx, get, &got).ok());
  }
  ASSERT_TRUE(got.found());
  ASSERT_EQ(got.value().size(), sent.nbytes());
  torch::Tensor received = torch::empty_like(sent);
  std::memcpy(received.data_ptr(), got.value().data(), got.value().size());
  EXPECT_TRUE(torch::equal(sent, received));
  // A method the generated code does not implement answers UNIMPLEMENTED, not a crash.
  herd::v1::GetStatusRequest status_req;
  herd::v1::JobStatus status;
  grpc::ClientContext ctx;
  EXPECT_EQ(stub->GetStatus(&ctx, status_req, &status).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  server->Shutdown();
}

}  // namespace
