/* scheduler-client/amqp/frames.h - AMQP frames gathered for one write.
 *
 * librabbitmq writes every frame with a send() of its own: a published message is three
 * frames (method, header, body) and the ack of a request a fourth.  VnFrames encodes the
 * same frames, with librabbitmq's own encoders, into one buffer that its owner writes with
 * one send() when it has nothing more to add.  The bytes are those librabbitmq would have
 * sent, in the same order.
 *
 * A VnFrames belongs to one thread; nothing in it is shared. */
#pragma once

#include <glib.h>
#include <amqp.h>
#include <amqp_framing.h>

typedef struct {
    GByteArray *buf; /* encoded frames not yet written */
} VnFrames;

void vn_frames_init(VnFrames *f);
void vn_frames_clear(VnFrames *f);

/* Drops what was gathered and not written (the connection it was meant for is gone). */
void vn_frames_reset(VnFrames *f);

gboolean vn_frames_pending(const VnFrames *f);

/* Appends one method frame; FALSE (nothing appended) when librabbitmq cannot encode it. */
gboolean vn_frames_method(VnFrames *f, amqp_channel_t channel, amqp_method_number_t id,
                          void *decoded);

/* Appends basic.publish, its content header and its body, cut into frames of at most
 * @frame_max bytes, as amqp_basic_publish() sends them. */
gboolean vn_frames_publish(VnFrames *f, amqp_channel_t channel, amqp_bytes_t exchange,
                           amqp_bytes_t routing_key, gboolean mandatory,
                           const amqp_basic_properties_t *props, amqp_bytes_t body, int frame_max);

/* Writes everything gathered to @fd (a socket, blocking or not), waiting up to
 * @timeout_ms for it to accept more whenever it is full.  Returns 0, or an errno value
 * (ETIMEDOUT when the socket accepted nothing for @timeout_ms); what was written is gone
 * from the buffer either way. */
int vn_frames_write(VnFrames *f, int fd, int timeout_ms);
