/* scheduler-client/sched_error.h - the error domain of the link to the scheduler (AMQP). */
#pragma once

#include <glib.h>

#define VN_SCHED_ERROR (vn_sched_error_quark())
GQuark vn_sched_error_quark(void);

typedef enum {
    VN_SCHED_ERROR_MALFORMED,  /* a message that is not oslo.messaging JSON */
    VN_SCHED_ERROR_VERSION,    /* an envelope version we do not speak */
    VN_SCHED_ERROR_TOO_LARGE,  /* a body above the configured limit */
    VN_SCHED_ERROR_CONFIG,     /* a broker URL or TLS setting that cannot work */
    VN_SCHED_ERROR_CONNECTION, /* the broker is unreachable or the link dropped */
    VN_SCHED_ERROR_TIMEOUT,    /* no reply in time */
    VN_SCHED_ERROR_REMOTE,     /* the remote method failed; message is its failure */
    VN_SCHED_ERROR_STOPPED,    /* the link is shutting down */
    VN_SCHED_ERROR_LAST
} VnSchedErrorCode;
