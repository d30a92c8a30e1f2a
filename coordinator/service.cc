#include "coordinator/service.h"

#include <stdexcept>

#include <fmt/format.h>

#include "common/config.h"

namespace herd::coordinator {

JobSettings JobSettings::from_config(const Config& config) {
  return {config.model_name, static_cast<uint32_t>(config.distributed.world_size)};
}

CoordinatorService::CoordinatorService(JobSettings settings) : settings_(std::move(settings)) {}

grpc::Status CoordinatorService::GetStatus(grpc::ServerContext*, const herd::v1::GetStatusRequest*,
                                           herd::v1::JobStatus* response) {
  std::lock_guard lock(mutex_);
  response->set_job_id(settings_.job_id);
  response->set_state(state_);
  response->set_world_size(settings_.world_size);
  return grpc::Status::OK;
}

CoordinatorServer::CoordinatorServer(JobSettings settings, const std::string& listen) : service_(std::move(settings)) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(&service_);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    throw std::runtime_error(fmt::format("coordinator: cannot listen on {}", listen));
  }
}

CoordinatorServer::~CoordinatorServer() { shutdown(); }

void CoordinatorServer::wait() { server_->Wait(); }

void CoordinatorServer::shutdown() {
  if (server_) server_->Shutdown();
}

}  // namespace herd::coordinator
