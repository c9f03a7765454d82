/* tests/fuzz/fuzz_envelope.c - oslo 2.0 request and reply envelopes from the broker. */
#include <stdint.h>

#include "scheduler-client/amqp/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(VnRpcMessage) msg = NULL;
    g_autoptr(VnRpcReply) reply = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) err2 = NULL;

    if (vn_envelope_decode_request((const char *)data, size, &msg, &err)) {
        /* what was accepted encodes again and decodes to the same method */
        g_autofree char *again = vn_envelope_encode_request(msg);
        g_autoptr(VnRpcMessage) back = NULL;
        g_autoptr(GError) err3 = NULL;
        if (!vn_envelope_decode_request(again, strlen(again), &back, &err3))
            __builtin_trap();
        if (g_strcmp0(msg->method, back->method) != 0)
            __builtin_trap();
    } else if (!err) {
        __builtin_trap(); /* a failure always says why */
    }
    reply = vn_envelope_decode_reply((const char *)data, size, &err2);
    if (!reply && !err2)
        __builtin_trap();
    return 0;
}
