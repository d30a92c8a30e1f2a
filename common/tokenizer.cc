#include "common/tokenizer.h"

#include <fmt/format.h>

#include "common/sentencepiece_tokenizer.h"
#include "common/tokenizer_json.h"

namespace herd {

namespace fs = std::filesystem;

std::unique_ptr<Tokenizer> Tokenizer::load(const fs::path& file) {
  if (file.extension() == ".json") return JsonTokenizer::load(file);
  return std::make_unique<SentencePieceTokenizer>(SentencePieceTokenizer::load(file));
}

const std::string& Tokenizer::eos_piece() const {
  if (eos_id_ < 0) {
    throw TokenizerError("the tokenizer names no end-of-sequence token (tokenizer_config.json: eos_token)");
  }
  return piece(eos_id_);
}

fs::path tokenizer_file(const fs::path& model, bool sentencepiece_first) {
  if (!fs::is_directory(model)) return model;
  const fs::path json = model / "tokenizer.json", spm = model / "tokenizer.model";
  if (sentencepiece_first && fs::exists(spm)) return spm;
  if (fs::exists(json)) return json;
  if (fs::exists(spm)) return spm;
  throw TokenizerError(fmt::format("{}: holds neither tokenizer.json nor tokenizer.model", model.string()));
}

}  // namespace herd
