/* scheduler-client/amqp/envelope.h - oslo.messaging's wire format, both ways.
 *
 * An AMQP body is {"oslo.version": "2.0", "oslo.message": "<the message, JSON-encoded
 * into a string>"}.  Requests carry method, args, version, namespace, _unique_id, and for
 * calls _msg_id, _reply_q and _timeout, plus the caller's context flattened into
 * _context_<key> members.  Replies carry result, failure (itself a JSON string of class,
 * module, message, tb, args, kwargs), ending, _msg_id and _unique_id.  Everything here is
 * pure: no I/O, so every parser is unit-tested and fuzzed. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#ifndef VN_JSON_AUTOPTR_DEFINED
#define VN_JSON_AUTOPTR_DEFINED
G_DEFINE_AUTOPTR_CLEANUP_FUNC(json_object, json_object_put)
#endif

/* A request as sent and received. */
typedef struct {
    char *method;
    json_object *args; /* object; never NULL once decoded */
    char *version;     /* NULL: none given */
    char *namespace_;  /* NULL: none given */
    char *unique_id;
    char *msg_id;         /* calls only */
    char *reply_q;        /* calls only */
    int timeout;          /* _timeout in seconds; 0 = none */
    json_object *context; /* the _context_* members without the prefix */
    char *request_id;     /* context's request_id, for logs */
} VnRpcMessage;

VnRpcMessage *vn_rpc_message_new(void);
void vn_rpc_message_free(VnRpcMessage *msg);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnRpcMessage, vn_rpc_message_free)

/* Decodes a request body.  Returns FALSE with @error when the body is not a valid request;
 * *out is still set to whatever could be read (message ids, reply queue) so that a
 * failure can be sent back, or NULL when nothing could.  Caller frees *out. */
gboolean vn_envelope_decode_request(const char *body, gsize len, VnRpcMessage **out,
                                    GError **error);

/* Encodes a request (for clients and tests).  Caller frees. */
char *vn_envelope_encode_request(const VnRpcMessage *msg);

/* A failure as oslo serialises it. */
typedef struct {
    const char *class_name;
    const char *module;
    const char *message;
} VnRpcFailure;

/* Encodes a reply to @msg_id: @result (borrowed, may be NULL) or @failure (may be NULL);
 * @ending FALSE makes the call-monitor keep-alive.  Caller frees. */
char *vn_envelope_encode_reply(const char *msg_id, json_object *result, const VnRpcFailure *failure,
                               gboolean ending);

/* A decoded reply (for clients). */
typedef struct {
    char *msg_id;
    json_object *result; /* NULL when null */
    char *failure_class; /* NULL when no failure */
    char *failure_module;
    char *failure_message;
    gboolean ending;
} VnRpcReply;

void vn_rpc_reply_free(VnRpcReply *reply);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnRpcReply, vn_rpc_reply_free)

VnRpcReply *vn_envelope_decode_reply(const char *body, gsize len, GError **error);

/* Encodes a versioned notification as oslo's messagingv2 driver sends it, wrapped in the
 * 2.0 envelope.  @payload is borrowed.  Caller frees. */
char *vn_envelope_encode_notification(const char *publisher_id, const char *event_type,
                                      const char *priority, json_object *payload);

/* A fresh uuid4 in hex without dashes, as oslo makes _unique_id and _msg_id. */
char *vn_envelope_new_id(void);

/* Parses JSON text strictly (UTF-8 validated, depth bounded); NULL on error. */
json_object *vn_json_parse_strict(const char *text, gsize len, GError **error);

/* @s (@len bytes, from outside) as valid UTF-8 without control characters, cut on a
 * character boundary to at most @max_bytes bytes.  Caller frees. */
char *vn_envelope_clean_text(const char *s, gsize len, gsize max_bytes);
