// The backends behind comm::connect (collective.h), each in its own file: ranks and
// options already checked there.
#pragma once

#include <memory>

#include "worker/comm/collective.h"

namespace herd::comm {

std::unique_ptr<Collective> connect_gloo(Store& store, const CollectiveOptions& options);  // gloo.cc
// nccl.cc; without CUDA (HERD_CUDA), collective.cc's refusal.
std::unique_ptr<Collective> connect_nccl(Store& store, const CollectiveOptions& options);

}  // namespace herd::comm
