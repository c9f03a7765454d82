/* agent/virt/virt.h - the libvirt module's error domain and shared helpers.  libvirt's
 * types stop at agent/virt: the rest of the agent sees uuids, plain descriptions and
 * GErrors carrying libvirt's own words. */
#pragma once

#include <glib.h>
#include <libvirt/libvirt.h>

#define VN_VIRT_ERROR (vn_virt_error_quark())
GQuark vn_virt_error_quark(void);

typedef enum {
    VN_VIRT_ERROR_CONNECT,   /* libvirtd unreachable */
    VN_VIRT_ERROR_NOT_FOUND, /* no such domain */
    VN_VIRT_ERROR_OPERATION, /* libvirt refused or failed */
    VN_VIRT_ERROR_XML,       /* XML we could not build or read */
    VN_VIRT_ERROR_LABEL,     /* a security label missing, wrong or shared */
    VN_VIRT_ERROR_TIMEOUT,   /* the guest did not do it in time */
    VN_VIRT_ERROR_LAST
} VnVirtErrorCode;

/* Sets @error from libvirt's last error: "<what>: <libvirt's message>"; the code is
 * NOT_FOUND for a missing domain, CONNECT for a broken connection, else OPERATION.
 * Always returns FALSE. */
gboolean vn_virt_error(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(virConnect, virConnectClose)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virDomain, virDomainFree)

/* Silences libvirt's default error printing to stderr: errors reach our log once, through
 * the GError of the call that failed. */
void vn_virt_init(void);
