// herd-spm-train: trains a SentencePiece tokenizer. A process of its own because
// Debian's libsentencepiece carries its own protobuf runtime, which must not share
// a process with the libprotobuf every other herd binary links (docs/build.md).
// Arguments are passed to SentencePieceTrainer unchanged.
#include <sentencepiece_trainer.h>

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  std::string args;
  for (int i = 1; i < argc; ++i) args += std::string(i > 1 ? " " : "") + argv[i];
  if (args.empty() || args == "--help") {
    std::cout << "usage: herd-spm-train --input=FILE --model_prefix=PREFIX [SentencePiece trainer flags]\n";
    return args.empty() ? 1 : 0;
  }
  auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) {
    std::cerr << "herd-spm-train: " << status.ToString() << "\n";
    return 1;
  }
  return 0;
}
