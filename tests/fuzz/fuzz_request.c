/* tests/fuzz/fuzz_request.c - method arguments as a controller sends them.
 *
 * Input: one byte choosing the method, then the JSON text of its "args".  Accepted build
 * specs must survive the instance store's JSON round trip. */
#include <stdint.h>

#include "api/instance.h"
#include "api/methods.h"
#include "scheduler-client/amqp/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const VnMethodInfo *m;
    g_autoptr(json_object) args = NULL;
    g_autoptr(VnRequest) req = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *peek = NULL;

    if (size < 1)
        return 0;
    m = vn_method_info((VnMethod)(data[0] % VN_METHOD_LAST));
    args = vn_json_parse_strict((const char *)data + 1, size - 1, NULL);
    if (!args)
        return 0;
    peek = vn_request_peek_instance(args);
    req = vn_request_parse(m, args, &err);
    if (!req) {
        if (!err)
            __builtin_trap();
        return 0;
    }
    if (req->spec) {
        g_autoptr(json_object) stored = vn_instance_record_to_json(req->spec);
        g_autoptr(GError) err2 = NULL;
        VnInstanceRecord *back = vn_instance_record_from_json(stored, &err2);
        if (!back)
            __builtin_trap();
        if (back->ports->len != req->spec->ports->len ||
            back->volumes->len != req->spec->volumes->len)
            __builtin_trap();
        /* a record never carries a CHAP password */
        for (guint i = 0; i < back->volumes->len; i++) {
            const VnVolumeSpec *v = g_ptr_array_index(back->volumes, i);
            if (v->conn.auth_password)
                __builtin_trap();
        }
        if (g_strcmp0(back->uuid, req->spec->uuid) != 0)
            __builtin_trap();
        vn_instance_record_free(back);
    }
    if (req->volume) {
        g_autoptr(json_object) o = vn_volume_spec_to_json(req->volume);
        g_autoptr(VnVolumeSpec) c = vn_volume_spec_copy(req->volume);
        if (!c || g_strcmp0(c->conn.auth_password, req->volume->conn.auth_password) != 0)
            __builtin_trap();
        if (json_object_object_get_ex(
                json_object_object_get(json_object_object_get(o, "connection_info"), "data"),
                "auth_password", NULL))
            __builtin_trap();
    }
    return 0;
}
