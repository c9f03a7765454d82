/* tests/fuzz/fuzz_config.c - the INI configuration file. */
#include <stdint.h>

#include "agent/base/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) cfg = vn_config_load_data((const char *)data, size, "fuzz.conf", &err);

    if (!cfg) {
        if (!err || !strstr(err->message, "fuzz.conf"))
            __builtin_trap(); /* every error names the file */
        return 0;
    }
    g_free(vn_config_dump(cfg));
    return 0;
}
