/* scheduler-client/amqp/frames.c - AMQP frames gathered for one write (see frames.h).
 *
 * A frame is: type (1 byte), channel (2), payload size (4), the payload, and 0xCE.  The
 * payloads are encoded by librabbitmq's public encoders: amqp_encode_method() after the
 * method's number, amqp_encode_properties() after the class, weight and body size. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "scheduler-client/amqp/frames.h"

#define FRAME_HEADER 7
#define FRAME_END    0xCE
#define ROOM         4096  /* the most a method or a content header of ours encodes to */
#define KEEP         65536 /* a buffer that grew past this is not kept once written */

void vn_frames_init(VnFrames *f)
{
    f->buf = g_byte_array_sized_new(ROOM);
}

void vn_frames_clear(VnFrames *f)
{
    if (f->buf)
        g_byte_array_free(f->buf, TRUE);
    f->buf = NULL;
}

void vn_frames_reset(VnFrames *f)
{
    g_byte_array_set_size(f->buf, 0);
}

gboolean vn_frames_pending(const VnFrames *f)
{
    return f->buf->len > 0;
}

static void put16(guint8 *p, guint16 v)
{
    p[0] = (guint8)(v >> 8);
    p[1] = (guint8)v;
}

static void put32(guint8 *p, guint32 v)
{
    put16(p, (guint16)(v >> 16));
    put16(p + 2, (guint16)v);
}

static void put64(guint8 *p, guint64 v)
{
    put32(p, (guint32)(v >> 32));
    put32(p + 4, (guint32)v);
}

/* Opens a frame with @room bytes for its payload; returns the payload's start. */
static guint8 *frame_open(VnFrames *f, guint8 type, amqp_channel_t channel, gsize room, gsize *at)
{
    *at = f->buf->len;
    g_byte_array_set_size(f->buf, (guint)(*at + FRAME_HEADER + room + 1));
    guint8 *p = f->buf->data + *at;
    p[0] = type;
    put16(p + 1, channel);
    return p + FRAME_HEADER;
}

/* Closes the frame opened at @at with a payload of @len bytes. */
static void frame_close(VnFrames *f, gsize at, gsize len)
{
    guint8 *p = f->buf->data + at;
    put32(p + 3, (guint32)len);
    p[FRAME_HEADER + len] = FRAME_END;
    g_byte_array_set_size(f->buf, (guint)(at + FRAME_HEADER + len + 1));
}

gboolean vn_frames_method(VnFrames *f, amqp_channel_t channel, amqp_method_number_t id,
                          void *decoded)
{
    gsize at;
    guint8 *p = frame_open(f, AMQP_FRAME_METHOD, channel, ROOM, &at);
    amqp_bytes_t out = { ROOM - 4, p + 4 };

    put32(p, id);
    int n = amqp_encode_method(id, decoded, out);
    if (n < 0) {
        g_byte_array_set_size(f->buf, (guint)at);
        return FALSE;
    }
    frame_close(f, at, (gsize)n + 4);
    return TRUE;
}

gboolean vn_frames_publish(VnFrames *f, amqp_channel_t channel, amqp_bytes_t exchange,
                           amqp_bytes_t routing_key, gboolean mandatory,
                           const amqp_basic_properties_t *props, amqp_bytes_t body, int frame_max)
{
    amqp_basic_publish_t m = { .ticket = 0,
                               .exchange = exchange,
                               .routing_key = routing_key,
                               .mandatory = mandatory ? 1 : 0,
                               .immediate = 0 };
    gsize start = f->buf->len, at, room = (gsize)frame_max - FRAME_HEADER - 1;

    if (!vn_frames_method(f, channel, AMQP_BASIC_PUBLISH_METHOD, &m))
        return FALSE;

    guint8 *p = frame_open(f, AMQP_FRAME_HEADER, channel, ROOM, &at);
    amqp_bytes_t out = { ROOM - 12, p + 12 };
    put16(p, AMQP_BASIC_CLASS);
    put16(p + 2, 0);
    put64(p + 4, body.len);
    int n = amqp_encode_properties(AMQP_BASIC_CLASS, (void *)props, out);
    if (n < 0) {
        g_byte_array_set_size(f->buf, (guint)start);
        return FALSE;
    }
    frame_close(f, at, (gsize)n + 12);

    for (gsize off = 0; off < body.len;) {
        gsize len = MIN(room, body.len - off);
        p = frame_open(f, AMQP_FRAME_BODY, channel, len, &at);
        memcpy(p, (const guint8 *)body.bytes + off, len);
        frame_close(f, at, len);
        off += len;
    }
    return TRUE;
}

int vn_frames_write(VnFrames *f, int fd, int timeout_ms)
{
    gsize done = 0;
    int err = 0;

    while (done < f->buf->len) {
        ssize_t n = send(fd, f->buf->data + done, f->buf->len - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += (gsize)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = { fd, POLLOUT, 0 };
            int r = poll(&p, 1, timeout_ms);
            if (r > 0 || (r < 0 && errno == EINTR))
                continue;
            err = r == 0 ? ETIMEDOUT : errno;
            break;
        }
        err = n < 0 ? errno : EPIPE;
        break;
    }
    if (done == f->buf->len && done > KEEP) {
        /* a large message went out: its buffer goes with it */
        g_byte_array_free(f->buf, TRUE);
        f->buf = g_byte_array_sized_new(ROOM);
    } else {
        g_byte_array_remove_range(f->buf, 0, (guint)done);
    }
    return err;
}
