// An error that ends a gang's attempt for every rank (a collective that broke, a
// peer that never came): the worker reports it and waits for the next gang.
// Classified by type, never by message: client/gang_loop.h catches it, and the
// worker's collective errors (worker/comm/store.h) are of it.
#pragma once

#include <stdexcept>

namespace herd {

class GangError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace herd
