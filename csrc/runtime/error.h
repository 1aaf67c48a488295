/* error.h — the runtime's one exception type: a status of edgetune_runtime.h and its one-line message.
 * Thrown anywhere inside csrc/runtime/, turned into (status, last error) at the C API and nowhere else. */
#ifndef EDGETUNE_RUNTIME_ERROR_H
#define EDGETUNE_RUNTIME_ERROR_H
#include <stdexcept>
#include <string>

#include "edgetune_runtime.h"

namespace et::rt {

struct Error : std::runtime_error {
    et_status status;
    Error(et_status s, const std::string &message) : std::runtime_error(message), status(s) {}
};

[[noreturn]] inline void fail(et_status s, const std::string &message) { throw Error(s, message); }

}  // namespace et::rt
#endif
