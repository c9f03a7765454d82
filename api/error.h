/* api/error.h - the errors of the RPC contract and their oslo.messaging failure classes.
 *
 * Every failure a controller can receive has one code here; the reply carries the code's
 * class and module so that the Python client raises a RemoteError naming it. */
#pragma once

#include <glib.h>

#define VN_API_ERROR (vn_api_error_quark())
GQuark vn_api_error_quark(void);

typedef enum {
    VN_API_ERROR_INVALID,                /* InvalidInput: the arguments break the contract */
    VN_API_ERROR_NO_SUCH_METHOD,         /* NoSuchMethod */
    VN_API_ERROR_UNSUPPORTED_VERSION,    /* UnsupportedVersion */
    VN_API_ERROR_NOT_FOUND,              /* InstanceNotFound: no such instance on this host */
    VN_API_ERROR_EXISTS,                 /* InstanceExists: a build for a uuid already known */
    VN_API_ERROR_INVALID_STATE,          /* InstanceInvalidState: not allowed in this state */
    VN_API_ERROR_INSUFFICIENT_RESOURCES, /* the host cannot fit the request */
    VN_API_ERROR_BUSY,                   /* too many operations queued for the instance */
    VN_API_ERROR_UNSUPPORTED,            /* a feature this agent does not offer */
    VN_API_ERROR_BUILD_FAILED,           /* the build failed and was rolled back */
    VN_API_ERROR_OPERATION_FAILED,       /* a lifecycle operation failed */
    VN_API_ERROR_MIGRATION_FAILED,       /* a live migration failed or was refused */
    VN_API_ERROR_INTERRUPTED,            /* the agent stopped or restarted during the operation */
    VN_API_ERROR_HOST_DISABLED,          /* the host takes no new guests (set_host_enabled) */
    VN_API_ERROR_INTERNAL,               /* a bug; the message says what */
    VN_API_ERROR_LAST
} VnApiErrorCode;

/* oslo failure class and module for @code, e.g. ("InstanceNotFound", "virtnode.exception"). */
const char *vn_api_error_class(VnApiErrorCode code);
const char *vn_api_error_module(VnApiErrorCode code);

/* The code to report for @error: its own when in VN_API_ERROR, else @fallback. */
VnApiErrorCode vn_api_error_code_of(const GError *error, VnApiErrorCode fallback);

/* Sets VN_API_ERROR_INVALID (InvalidInput) with the message @fmt names; always FALSE, so
 * a validator can `return vn_api_invalid(error, "field: ...")`. */
gboolean vn_api_invalid(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
