/* api/error.c - names of the contract's failures. */
#include <stdarg.h>

#include "api/error.h"

GQuark vn_api_error_quark(void)
{
    return g_quark_from_static_string("vn-api-error");
}

static const char *const classes[VN_API_ERROR_LAST] = {
    [VN_API_ERROR_INVALID] = "InvalidInput",
    [VN_API_ERROR_NO_SUCH_METHOD] = "NoSuchMethod",
    [VN_API_ERROR_UNSUPPORTED_VERSION] = "UnsupportedVersion",
    [VN_API_ERROR_NOT_FOUND] = "InstanceNotFound",
    [VN_API_ERROR_EXISTS] = "InstanceExists",
    [VN_API_ERROR_INVALID_STATE] = "InstanceInvalidState",
    [VN_API_ERROR_INSUFFICIENT_RESOURCES] = "InsufficientResources",
    [VN_API_ERROR_BUSY] = "TooManyOperations",
    [VN_API_ERROR_UNSUPPORTED] = "NotSupported",
    [VN_API_ERROR_BUILD_FAILED] = "BuildAbortException",
    [VN_API_ERROR_OPERATION_FAILED] = "OperationFailed",
    [VN_API_ERROR_MIGRATION_FAILED] = "MigrationError",
    [VN_API_ERROR_INTERRUPTED] = "OperationInterrupted",
    [VN_API_ERROR_HOST_DISABLED] = "ComputeHostDisabled",
    [VN_API_ERROR_INTERNAL] = "InternalError",
};

const char *vn_api_error_class(VnApiErrorCode code)
{
    return code < VN_API_ERROR_LAST && classes[code] ? classes[code] : "InternalError";
}

const char *vn_api_error_module(VnApiErrorCode code)
{
    /* the dispatcher's own failures carry oslo.messaging's module, as its servers send */
    if (code == VN_API_ERROR_NO_SUCH_METHOD || code == VN_API_ERROR_UNSUPPORTED_VERSION)
        return "oslo_messaging.rpc.dispatcher";
    return "virtnode.exception";
}

VnApiErrorCode vn_api_error_code_of(const GError *error, VnApiErrorCode fallback)
{
    if (error && error->domain == VN_API_ERROR && error->code >= 0 &&
        error->code < VN_API_ERROR_LAST)
        return error->code;
    return fallback;
}

gboolean vn_api_invalid(GError **error, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, VN_API_ERROR, VN_API_ERROR_INVALID, msg);
    return FALSE;
}
