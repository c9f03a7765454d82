/* tests/fuzz/fuzz_image_header.c - the first bytes of a downloaded image. */
#include <stdint.h>

#include "storage/image_inspect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    VnImageInfo info;
    g_autoptr(GError) err = NULL;
    g_autofree char *backing = vn_image_backing_name(data, size);

    memset(&info, 0, sizeof(info));
    if (vn_image_inspect(data, size, (guint64)size * 3, &info, &err)) {
        g_autoptr(GError) e1 = NULL;
        g_autoptr(GError) e2 = NULL;
        /* an image with a backing file never passes the policy */
        if (backing && vn_image_check(&info, "qcow2", G_MAXUINT64, &e1))
            __builtin_trap();
        vn_image_check(&info, "raw", 1 << 30, &e2);
    } else if (!err) {
        __builtin_trap();
    }
    return 0;
}
