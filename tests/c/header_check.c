/*
 * Includes pegan.h alone and calls into the library. ffi/tests/c_api.rs compiles this file as C99,
 * C11, C++11 and C++17 with -Wall -Wextra -Werror -pedantic, links it and runs it.
 */
#include <pegan.h>

int main(void) {
    PeganContext *context = NULL;
    PeganStatus status = pegan_context_new(NULL, &context);
    pegan_context_free(context);
    return status == PEGAN_STATUS_OK && pegan_abi_version() == PEGAN_ABI_VERSION ? 0 : 1;
}
