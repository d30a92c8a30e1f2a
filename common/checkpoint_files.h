// The files of a training checkpoint as both sides see them: the worker writes
// {trainer_output_dir}/checkpoint-STEP/ with checkpoint.json (a manifest of every
// other file's size and hash) last, and commits the manifest's digest to the
// coordinator; the coordinator resumes a job from the newest committed checkpoint
// whose files still match. No libtorch here: the coordinator reads this too.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace herd {

constexpr const char* kCheckpointManifest = "checkpoint.json";

// {output_dir}/checkpoint-STEP
std::filesystem::path checkpoint_dir(const std::filesystem::path& output_dir, uint64_t step);

// What is wrong with a checkpoint directory ("checkpoint.json is missing", "X has N
// bytes, the manifest says M", ...), or "" when every file matches its manifest.
std::string checkpoint_problem(const std::filesystem::path& dir);

// The digest a worker commits: the manifest's hash as 64 hex digits.
std::string checkpoint_digest(const std::filesystem::path& dir);

}  // namespace herd
