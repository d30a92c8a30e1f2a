// A file of worker/model that reaches into the collectives (tests/CMakeLists.txt:
// build.include_rules runs the include check over it as if it were one).
#include "worker/comm/collective.h"
#include "worker/model/llama.h"
