/* storage/stor_error.h - the storage module's error domain. */
#pragma once

#include <glib.h>

#define VN_STOR_ERROR (vn_stor_error_quark())
GQuark vn_stor_error_quark(void);

typedef enum {
    VN_STOR_ERROR_DOWNLOAD,  /* the image could not be fetched */
    VN_STOR_ERROR_CHECKSUM,  /* it was fetched but is not the image asked for */
    VN_STOR_ERROR_TOO_LARGE, /* above the configured size limit */
    VN_STOR_ERROR_UNSAFE,    /* a format or header we refuse (backing file, data file, ...) */
    VN_STOR_ERROR_IO,        /* a local file operation failed */
    VN_STOR_ERROR_TOOL,      /* qemu-img failed */
    VN_STOR_ERROR_CANCELLED, /* the operation was cancelled */
    VN_STOR_ERROR_INVALID,   /* a request that makes no sense (disk smaller than image, ...) */
    VN_STOR_ERROR_TIMEOUT,   /* a tool or device did not answer in time (and was killed) */
    VN_STOR_ERROR_LAST
} VnStorErrorCode;
