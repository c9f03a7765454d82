/* agent/virt/virt.c - libvirt errors as GErrors. */
#include <libvirt/virterror.h>

#include "agent/virt/virt.h"

GQuark vn_virt_error_quark(void)
{
    return g_quark_from_static_string("vn-virt-error");
}

static void quiet(void *data, virErrorPtr err)
{
    (void)data;
    (void)err;
}

void vn_virt_init(void)
{
    static gsize once;

    if (g_once_init_enter(&once)) {
        virInitialize();
        virSetErrorFunc(NULL, quiet);
        g_once_init_leave(&once, 1);
    }
}

gboolean vn_virt_error(GError **error, const char *fmt, ...)
{
    va_list ap;
    virErrorPtr e = virGetLastError();
    int code = VN_VIRT_ERROR_OPERATION;

    va_start(ap, fmt);
    g_autofree char *what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (e && (e->code == VIR_ERR_NO_DOMAIN || e->code == VIR_ERR_NO_DOMAIN_SNAPSHOT))
        code = VN_VIRT_ERROR_NOT_FOUND;
    else if (e &&
             (e->code == VIR_ERR_SYSTEM_ERROR || e->code == VIR_ERR_NO_CONNECT ||
              e->code == VIR_ERR_INVALID_CONN || e->code == VIR_ERR_RPC) &&
             (e->domain == VIR_FROM_RPC || e->domain == VIR_FROM_REMOTE))
        code = VN_VIRT_ERROR_CONNECT;
    g_set_error(error, VN_VIRT_ERROR, code, "%s: %s", what,
                e && e->message ? e->message : "unknown libvirt error");
    virResetLastError();
    return FALSE;
}
