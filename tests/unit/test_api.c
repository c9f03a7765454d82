/* Unit tests of api/: request validation, the method table, the instance record. */
#include "tests/unit/testutil.h"

#include <string.h>

#include "api/error.h"
#include "api/instance.h"
#include "api/json.h"
#include "api/methods.h"

/* The build request of the compute issue, as written there. */
static const char *build_args =
    "{\"instance\": {\"uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"name\": \"vm-1\","
    " \"project_id\": \"p1\", \"user_id\": \"u1\","
    " \"flavor\": {\"name\": \"m1.tiny\", \"vcpus\": 1, \"memory_mb\": 128,"
    "   \"root_gb\": 1, \"ephemeral_gb\": 0, \"swap_mb\": 0, \"extra_specs\": {}},"
    " \"image\": {\"id\": \"guest-1\", \"url\": \"http://127.0.0.1:8099/guest.qcow2\","
    "   \"sha256\": \"ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\","
    "   \"disk_format\": \"qcow2\", \"size\": 12345678},"
    " \"metadata\": {}},"
    " \"networks\": [], \"block_device_mapping\": []}";

static VnRequest *parse(VnMethod m, const char *args, GError **error)
{
    g_autoptr(json_object) o = json_tokener_parse(args);

    assert_non_null(o);
    return vn_request_parse(vn_method_info(m), o, error);
}

static void test_build_request_as_written(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRequest) r = parse(VN_METHOD_BUILD_AND_RUN_INSTANCE, build_args, &err);

    (void)state;
    assert_non_null(r);
    assert_string_equal(r->instance_uuid, "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    assert_string_equal(r->spec->name, "vm-1");
    assert_int_equal(r->spec->flavor.memory_mb, 128);
    assert_int_equal(r->spec->flavor.root_gb, 1);
    /* checksums are kept lower-case */
    assert_string_equal(r->spec->image.sha256,
                        "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    assert_int_equal(r->spec->image.size, 12345678);
}

/* Replaces the first @from in build_args with @to and expects @needle in the error. */
static void expect_build_error(const char *from, const char *to, const char *needle,
                               VnApiErrorCode code)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *args = NULL;
    const char *at = strstr(build_args, from);
    g_autoptr(VnRequest) r = NULL;

    assert_non_null(at);
    args = g_strdup_printf("%.*s%s%s", (int)(at - build_args), build_args, to, at + strlen(from));
    r = parse(VN_METHOD_BUILD_AND_RUN_INSTANCE, args, &err);
    assert_null(r);
    assert_true(g_error_matches(err, VN_API_ERROR, code));
    if (!strstr(err->message, needle))
        fail_msg("'%s' does not contain '%s'", err->message, needle);
}

static void test_build_request_errors(void **state)
{
    (void)state;
    expect_build_error("\"vcpus\": 1", "\"vcpus\": \"1\"",
                       "instance.flavor.vcpus: expected an integer", VN_API_ERROR_INVALID);
    expect_build_error("\"vcpus\": 1", "\"vcpus\": 0", "instance.flavor.vcpus: must be between 1",
                       VN_API_ERROR_INVALID);
    expect_build_error("\"memory_mb\": 128", "\"memory_mb\": 99999999999",
                       "instance.flavor.memory_mb", VN_API_ERROR_INVALID);
    expect_build_error("\"uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\"", "\"uuid\": \"nope\"",
                       "instance.uuid", VN_API_ERROR_INVALID);
    expect_build_error("http://127.0.0.1:8099/guest.qcow2", "file:///etc/passwd",
                       "instance.image.url: only http:// and https://", VN_API_ERROR_INVALID);
    expect_build_error("\"disk_format\": \"qcow2\"", "\"disk_format\": \"vmdk\"",
                       "instance.image.disk_format: 'vmdk' is not supported", VN_API_ERROR_INVALID);
    expect_build_error("ABCDEF0123456789", "XYZDEF0123456789",
                       "instance.image.sha256: expected 64 hexadecimal digits",
                       VN_API_ERROR_INVALID);
    expect_build_error("\"name\": \"vm-1\"", "\"name\": \"vm\\u0001\"",
                       "instance.name: contains control characters", VN_API_ERROR_INVALID);
    expect_build_error("\"metadata\": {}", "\"metadata\": {\"k\": 5}",
                       "instance.metadata.k: expected a string", VN_API_ERROR_INVALID);
    expect_build_error("\"networks\": []", "\"networks\": {}",
                       "networks: a list of at most 16 ports expected", VN_API_ERROR_INVALID);
    expect_build_error("\"networks\": []", "\"networks\": [{\"id\": \"n\"}]",
                       "networks[0].id: unexpected", VN_API_ERROR_INVALID);
    expect_build_error("\"networks\": []", "\"networks\": [], \"x\": 1", "x: unexpected argument",
                       VN_API_ERROR_INVALID);
    expect_build_error("\"root_gb\": 1", "\"root_gb\": 0, \"y\": 2",
                       "instance.flavor.y: unexpected argument", VN_API_ERROR_INVALID);
    expect_build_error("\"size\": 12345678", "\"size\": 12345678, \"min_ram\": 4096",
                       "less than the image's min_ram", VN_API_ERROR_INVALID);
    expect_build_error("\"size\": 12345678", "\"size\": 2147483648", "does not fit in 1 GiB",
                       VN_API_ERROR_INVALID);
}

static void test_other_requests(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRequest) r = NULL;

    (void)state;
    r = parse(
        VN_METHOD_REBOOT_INSTANCE,
        "{\"instance_uuid\": \"0B5E1C5E-8F1D-4C1A-9D4E-2F7C9A6B1E01\", \"reboot_type\": \"HARD\"}",
        &err);
    assert_non_null(r);
    assert_int_equal(r->reboot_type, VN_REBOOT_HARD);
    assert_string_equal(r->instance_uuid, "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    g_clear_pointer(&r, vn_request_free);

    r = parse(
        VN_METHOD_REBOOT_INSTANCE,
        "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"reboot_type\": \"WARM\"}",
        &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "reboot_type: 'WARM' is not SOFT or HARD"));
    g_clear_error(&err);

    r = parse(VN_METHOD_STOP_INSTANCE,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"timeout\": 5}",
              &err);
    assert_non_null(r);
    assert_int_equal(r->stop_timeout, 5);
    assert_true(r->clean_shutdown);
    g_clear_pointer(&r, vn_request_free);

    r = parse(VN_METHOD_PING, "{\"arg\": {\"x\": [1, 2]}}", &err);
    assert_non_null(r);
    assert_non_null(r->ping_arg);
    g_clear_pointer(&r, vn_request_free);

    r = parse(VN_METHOD_LIVE_MIGRATION,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"dest_host\": "
              "\"host-b\", \"block_migration\": null}",
              &err);
    assert_non_null(r);
    assert_int_equal(r->block_migration, -1);
    assert_string_equal(r->dest_host, "host-b");
    g_clear_pointer(&r, vn_request_free);

    r = parse(VN_METHOD_LIVE_MIGRATION,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"dest_host\": "
              "\"../x\"}",
              &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "dest_host"));
    g_clear_error(&err);

    r = parse(VN_METHOD_GET_INSTANCE, "{}", &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "instance_uuid: missing"));
}

/* A peer's record in migrate_data is validated and must be the instance named. */
static void test_pre_live_migration_record(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRequest) b = parse(VN_METHOD_BUILD_AND_RUN_INSTANCE, build_args, &err);
    g_autoptr(json_object) rec = NULL;
    g_autofree char *good = NULL;
    g_autofree char *other = NULL;
    g_autoptr(VnRequest) r = NULL;

    (void)state;
    assert_non_null(b);
    rec = vn_instance_record_to_json(b->spec);
    good = g_strdup_printf("{\"instance_uuid\": \"%s\", \"migrate_data\": {\"instance\": %s}}",
                           b->spec->uuid, json_object_to_json_string(rec));
    r = parse(VN_METHOD_PRE_LIVE_MIGRATION, good, &err);
    assert_non_null(r);
    g_clear_pointer(&r, vn_request_free);
    other =
        g_strdup_printf("{\"instance_uuid\": \"%s\", \"migrate_data\": {\"instance\": %s}}",
                        "11111111-2222-4333-8444-555555555555", json_object_to_json_string(rec));
    r = parse(VN_METHOD_PRE_LIVE_MIGRATION, other, &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "migrate_data.instance.uuid"));
    g_clear_error(&err);
    r = parse(VN_METHOD_PRE_LIVE_MIGRATION,
              "{\"instance_uuid\": \"11111111-2222-4333-8444-555555555555\", "
              "\"migrate_data\": {\"instance\": {\"uuid\": 5}}}",
              &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "migrate_data.instance"));
}

/* URLs' secrets never leave the request: records and the journal see them redacted, the
 * download alone the original. */
static void test_url_redaction(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "http://h/p/img.qcow2", "http://h/p/img.qcow2" },
        { "https://user:pa55@h:8443/img", "https://***@h:8443/img" },
        { "https://h/img?token=abc&x=1#frag", "https://h/img?token=***&x=***#frag" },
        { "http://a:b@c@h/i?sig", "http://***@h/i?***" },
        { "https://h/img?", "https://h/img?" },
    };
    g_autoptr(GError) err = NULL;

    (void)state;
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *r = vn_url_redact(cases[i].in);
        assert_string_equal(r, cases[i].out);
    }
    g_autofree char *secret = g_strdup(build_args);
    g_autofree char *withcred = NULL;
    {
        g_autoptr(GString) g = g_string_new(secret);
        g_string_replace(g, "http://127.0.0.1:8099/guest.qcow2",
                         "http://u:S3CRET@127.0.0.1:8099/guest.qcow2?token=T0KEN", 1);
        withcred = g_strdup(g->str);
    }
    g_autoptr(VnRequest) r = parse(VN_METHOD_BUILD_AND_RUN_INSTANCE, withcred, &err);
    assert_non_null(r);
    assert_non_null(strstr(r->spec->image.download_url, "S3CRET"));
    assert_null(strstr(r->spec->image.url, "S3CRET"));
    assert_null(strstr(r->spec->image.url, "T0KEN"));
    g_autoptr(json_object) rec = vn_instance_record_to_json(r->spec);
    assert_null(strstr(json_object_to_json_string(rec), "S3CRET"));
    assert_null(strstr(json_object_to_json_string(rec), "T0KEN"));
    g_autoptr(json_object) args = json_tokener_parse(withcred);
    g_autoptr(json_object) red = vn_request_args_redacted("build_and_run_instance", args);
    assert_null(strstr(json_object_to_json_string(red), "S3CRET"));
    assert_null(strstr(json_object_to_json_string(red), "T0KEN"));
    /* the original is untouched */
    assert_non_null(strstr(json_object_to_json_string(args), "S3CRET"));
}

static json_object *load_json(const char *rel)
{
    g_autofree char *path = vn_test_source_path(rel);
    json_object *o = json_object_from_file(path);

    if (!o)
        fail_msg("cannot read %s", path);
    return o;
}

static void merge(json_object *into, json_object *from)
{
    json_object_object_foreach(from, k, v)
    {
        if (v)
            json_object_object_add(into, k, json_object_get(v));
        else
            json_object_object_del(into, k);
    }
}

static char *build_with_ports(json_object *ports)
{
    g_autoptr(json_object) args = json_tokener_parse(build_args);

    json_object_object_add(args, "networks", json_object_get(ports));
    return g_strdup(json_object_to_json_string(args));
}

/* The good port parses; every entry of the bad-port corpus (tests/corpus/bad_ports.json,
 * also sent over RPC by the network integration test) is InvalidInput naming the field. */
static void test_ports(void **state)
{
    g_autoptr(json_object) good = load_json("tests/corpus/good_port.json");
    g_autoptr(json_object) bad = load_json("tests/corpus/bad_ports.json");
    g_autoptr(GError) err = NULL;

    (void)state;
    {
        g_autoptr(json_object) list = json_object_new_array();
        json_object_array_add(list, json_object_get(good));
        g_autofree char *a = build_with_ports(list);
        g_autoptr(VnRequest) r = parse(VN_METHOD_BUILD_AND_RUN_INSTANCE, a, &err);
        if (!r)
            fail_msg("the good port: %s", err->message);
        assert_int_equal(r->spec->ports->len, 1);
        VnPortSpec *p = g_ptr_array_index(r->spec->ports, 0);
        assert_string_equal(p->mac, "fa:16:3e:12:34:56");
        assert_int_equal(p->mtu, 1500);
        assert_int_equal(p->rules->len, 2);
        assert_int_equal(((VnFixedIp *)g_ptr_array_index(p->fixed_ips, 0))->prefix, 24);
        assert_int_equal(p->inbound.burst, 1024);
        /* the record's JSON reads back to the same port */
        g_autoptr(json_object) rec = vn_instance_record_to_json(r->spec);
        g_autoptr(VnInstanceRecord) back = vn_instance_record_from_json(rec, &err);
        assert_non_null(back);
        g_autoptr(json_object) p1 = vn_port_spec_to_json(p);
        g_autoptr(json_object) p2 = vn_port_spec_to_json(g_ptr_array_index(back->ports, 0));
        assert_string_equal(json_object_to_json_string(p1), json_object_to_json_string(p2));
    }
    for (size_t i = 0; i < json_object_array_length(bad); i++) {
        json_object *c = json_object_array_get_idx(bad, i);
        const char *why = json_object_get_string(json_object_object_get(c, "why"));
        const char *expect = json_object_get_string(json_object_object_get(c, "expect"));
        json_object *port = NULL, *v;
        g_autoptr(json_object) list = json_object_new_array();

        assert_int_equal(json_object_deep_copy(good, &port, NULL), 0);
        if ((v = json_object_object_get(c, "set")))
            merge(port, v);
        if ((v = json_object_object_get(c, "del")))
            for (size_t k = 0; k < json_object_array_length(v); k++)
                json_object_object_del(port,
                                       json_object_get_string(json_object_array_get_idx(v, k)));
        json_object *ip = json_object_array_get_idx(json_object_object_get(port, "fixed_ips"), 0);
        if ((v = json_object_object_get(c, "set_ip")))
            merge(ip, v);
        if ((v = json_object_object_get(c, "set_subnet")))
            merge(json_object_object_get(ip, "subnet"), v);
        if ((v = json_object_object_get(c, "set_rule")))
            merge(
                json_object_array_get_idx(
                    json_object_object_get(json_object_array_get_idx(
                                               json_object_object_get(port, "security_groups"), 0),
                                           "rules"),
                    0),
                v);
        json_object_array_add(list, port);
        if (json_object_get_boolean(json_object_object_get(c, "twice")))
            json_object_array_add(list, json_object_get(port));
        g_autofree char *a = build_with_ports(list);
        g_autoptr(VnRequest) r = parse(VN_METHOD_BUILD_AND_RUN_INSTANCE, a, &err);
        if (r)
            fail_msg("bad port accepted: %s", why);
        if (!g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INVALID) ||
            !strstr(err->message, expect))
            fail_msg("%s: '%s' does not name '%s'", why, err->message, expect);
        g_clear_error(&err);
    }
}

static void test_method_lookup(void **state)
{
    g_autoptr(GError) err = NULL;
    const VnMethodInfo *m;

    (void)state;
    m = vn_method_lookup(NULL, "build_and_run_instance", "1.0", &err);
    assert_non_null(m);
    assert_int_equal(m->kind, VN_KIND_BUILD);
    assert_true(m->journaled);
    m = vn_method_lookup(NULL, "ping", NULL, &err);
    assert_non_null(m);
    m = vn_method_lookup("baseapi", "ping", "1.1", &err);
    assert_non_null(m);
    m = vn_method_lookup(NULL, "live_migration", "1.1", &err);
    assert_non_null(m);

    m = vn_method_lookup(NULL, "frobnicate", "1.0", &err);
    assert_null(m);
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_NO_SUCH_METHOD));
    assert_non_null(strstr(err->message, "frobnicate"));
    assert_string_equal(vn_api_error_class(err->code), "NoSuchMethod");
    g_clear_error(&err);

    m = vn_method_lookup(NULL, "ping", "2.0", &err);
    assert_null(m);
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_UNSUPPORTED_VERSION));
    g_clear_error(&err);
    m = vn_method_lookup(NULL, "ping", "1.9", &err);
    assert_null(m);
    g_clear_error(&err);
    m = vn_method_lookup(NULL, "ping", "x.y", &err);
    assert_null(m);
    g_clear_error(&err);
    m = vn_method_lookup("baseapi", "terminate_instance", "1.0", &err);
    assert_null(m);
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_NO_SUCH_METHOD));
}

static void test_record_round_trip(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRequest) r = parse(VN_METHOD_BUILD_AND_RUN_INSTANCE, build_args, &err);
    g_autoptr(VnInstanceRecord) rec = vn_instance_record_copy(r->spec);
    g_autoptr(json_object) o = NULL;
    g_autoptr(VnInstanceRecord) back = NULL;

    (void)state;
    rec->host = g_strdup("host-a");
    rec->vm_state = VN_VM_ACTIVE;
    rec->task_state = VN_TASK_REBOOTING;
    rec->power_state = VN_POWER_RUNNING;
    rec->launched_at = 1795290000;
    rec->fault_class = g_strdup("X");
    rec->fault_message = g_strdup("went wrong");
    rec->guest_uid = 30001;
    rec->generation = 42;
    g_hash_table_insert(rec->metadata, g_strdup("vn.mode"), g_strdup("dirty"));
    o = vn_instance_record_to_json(rec);
    assert_string_equal(json_object_get_string(json_object_object_get(o, "launched_at")),
                        "2026-11-21T19:40:00Z");
    assert_int_equal(json_object_get_int(json_object_object_get(o, "power_state")), 1);
    back = vn_instance_record_from_json(o, &err);
    assert_non_null(back);
    assert_int_equal(back->vm_state, VN_VM_ACTIVE);
    assert_int_equal(back->task_state, VN_TASK_REBOOTING);
    assert_int_equal(back->launched_at, 1795290000);
    assert_string_equal(back->fault_message, "went wrong");
    assert_int_equal(back->guest_uid, 30001);
    assert_int_equal(back->generation, 42);
    assert_string_equal(g_hash_table_lookup(back->metadata, "vn.mode"), "dirty");

    /* a record with an impossible state is refused */
    json_object_object_add(o, "power_state", json_object_new_int(2));
    g_autoptr(VnInstanceRecord) bad = vn_instance_record_from_json(o, &err);
    assert_null(bad);
}

static void test_uuid_canonical(void **state)
{
    g_autofree char *a = vn_uuid_canonical("0B5E1C5E-8F1D-4C1A-9D4E-2F7C9A6B1E01");
    g_autofree char *b = vn_uuid_canonical("0b5e1c5e8f1d4c1a9d4e2f7c9a6b1e01");
    g_autofree char *c = vn_uuid_canonical("0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e0g");

    (void)state;
    assert_string_equal(a, "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    assert_null(b);
    assert_null(c);
}

static const char *nfs_bd =
    "{\"volume_id\": \"v-nfs-1\", \"boot_index\": 0, \"delete_on_termination\": true,"
    " \"connection_info\": {\"driver_volume_type\": \"nfs\", \"serial\": \"v-nfs-1\","
    "   \"data\": {\"export\": \"[2001:db8::5]:/exports/cinder/\", \"name\": \"volume-v-nfs-1\","
    "   \"options\": \"vers=4.1,timeo=600\", \"format\": \"qcow2\", \"access_mode\": \"rw\","
    "   \"encrypted\": false, \"qos_specs\": null}}}";

static const char *iscsi_bd =
    "{\"volume_id\": \"v-iscsi-1\", \"device_name\": \"/dev/vdf\","
    " \"connection_info\": {\"driver_volume_type\": \"iscsi\", \"data\": {"
    "   \"target_portal\": \"192.0.2.10:3260\", \"target_iqn\": \"iqn.2010-10.org.openstack:v1\","
    "   \"target_lun\": 1, \"target_portals\": [\"198.51.100.10\", \"192.0.2.10:3260\"],"
    "   \"target_iqns\": [\"iqn.2010-10.org.openstack:v1\", \"iqn.2010-10.org.openstack:v1\"],"
    "   \"target_luns\": [1, 1], \"auth_method\": \"CHAP\", \"auth_username\": \"u\","
    "   \"auth_password\": \"s3cr3t-pw\", \"discard\": true, \"target_discovered\": false}}}";

static void test_volumes(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) n = json_tokener_parse(nfs_bd);
    g_autoptr(json_object) i = json_tokener_parse(iscsi_bd);
    g_autoptr(VnVolumeSpec) nv = vn_volume_spec_parse(n, "block_device", &err);
    g_autoptr(VnVolumeSpec) iv = vn_volume_spec_parse(i, "block_device", &err);

    (void)state;
    assert_non_null(nv);
    assert_non_null(iv);
    assert_int_equal(nv->conn.type, VN_VOL_NFS);
    assert_string_equal(nv->conn.server, "2001:db8::5");
    assert_string_equal(nv->conn.path, "/exports/cinder");
    assert_string_equal(nv->conn.format, "qcow2");
    assert_int_equal(nv->boot_index, 0);
    assert_true(nv->delete_on_termination);
    assert_string_equal(iv->device_name, "vdf");
    assert_int_equal(iv->conn.paths->len, 2); /* target_portal first, duplicates folded */
    VnIscsiPath *p0 = g_ptr_array_index(iv->conn.paths, 0);
    VnIscsiPath *p1 = g_ptr_array_index(iv->conn.paths, 1);
    assert_string_equal(p0->host, "192.0.2.10");
    assert_string_equal(p1->host, "198.51.100.10");
    assert_int_equal(p1->port, 3260);
    assert_string_equal(iv->conn.auth_password, "s3cr3t-pw");
    /* what records keep: everything but the password, and it reads back */
    g_autoptr(json_object) out = vn_volume_spec_to_json(iv);
    const char *text = json_object_to_json_string(out);
    assert_null(strstr(text, "s3cr3t"));
    g_autoptr(json_object) list = json_object_new_array();
    json_object_array_add(list, json_object_get(out));
    g_autoptr(GPtrArray) back = vn_volume_specs_from_record(list, "x", &err);
    assert_non_null(back);
    VnVolumeSpec *b = g_ptr_array_index(back, 0);
    assert_null(b->conn.auth_password);
    assert_string_equal(b->conn.auth_username, "u");
    /* ... but a request without it is refused */
    g_autoptr(GPtrArray) req = vn_volume_specs_parse(list, "x", &err);
    assert_null(req);
    assert_null(strstr(err->message, "s3cr3t"));
    g_clear_error(&err);
    /* two boot volumes, a volume twice */
    g_autoptr(json_object) two = json_object_new_array();
    json_object_array_add(two, json_object_get(n));
    json_object_array_add(two, json_object_get(n));
    g_autoptr(GPtrArray) dup = vn_volume_specs_parse(two, "block_device_mapping", &err);
    assert_null(dup);
    assert_non_null(strstr(err->message, "block_device_mapping[1]"));
}

static void test_secrets_redacted_in_journaled_args(void **state)
{
    g_autofree char *args =
        g_strdup_printf("{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\","
                        " \"block_device\": %s}",
                        iscsi_bd);
    g_autoptr(json_object) o = json_tokener_parse(args);
    g_autoptr(json_object) r = vn_request_args_redacted("attach_volume", o);

    (void)state;
    assert_null(strstr(json_object_to_json_string(r), "s3cr3t"));
    assert_non_null(strstr(json_object_to_json_string(r), "auth_password"));
    /* the request itself keeps it, for the connect */
    assert_non_null(strstr(json_object_to_json_string(o), "s3cr3t-pw"));
}

/* rebuild_instance: on this host (an optional new image) or an evacuation (recreate, with
 * the spec of the instance named); snapshot_instance: an http(s) upload URL. */
static void test_rebuild_and_snapshot_requests(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRequest) r = NULL;
    g_autofree char *evacuate = NULL;
    g_autoptr(json_object) journaled = NULL;
    g_autoptr(json_object) o = NULL;

    (void)state;
    r = parse(VN_METHOD_REBUILD_INSTANCE,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"image\": {\"id\": "
              "\"guest-2\", \"url\": \"http://u:pw@127.0.0.1/g2.qcow2\", \"sha256\": "
              "\"abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\", "
              "\"disk_format\": \"qcow2\"}}",
              &err);
    assert_non_null(r);
    assert_false(r->recreate);
    assert_string_equal(r->image->id, "guest-2");
    assert_string_equal(r->image->download_url, "http://u:pw@127.0.0.1/g2.qcow2");
    assert_null(strstr(r->image->url, "pw"));
    g_clear_pointer(&r, vn_request_free);

    /* the spec is for evacuations only */
    evacuate = g_strdup_printf("%.*s, \"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\"}",
                               (int)strlen(build_args) - 1, build_args);
    r = parse(VN_METHOD_REBUILD_INSTANCE, evacuate, &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "recreate true"));
    g_clear_error(&err);
    g_free(evacuate);
    evacuate = g_strdup_printf("%.*s, \"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\","
                               " \"recreate\": true}",
                               (int)strlen(build_args) - 1, build_args);
    r = parse(VN_METHOD_REBUILD_INSTANCE, evacuate, &err);
    assert_non_null(r);
    assert_true(r->recreate);
    assert_string_equal(r->spec->uuid, "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    assert_string_equal(r->spec->image.id, "guest-1");
    g_clear_pointer(&r, vn_request_free);
    /* ... and must be the instance named */
    g_free(evacuate);
    evacuate = g_strdup_printf("%.*s, \"instance_uuid\": \"11111111-8f1d-4c1a-9d4e-2f7c9a6b1e01\","
                               " \"recreate\": true}",
                               (int)strlen(build_args) - 1, build_args);
    r = parse(VN_METHOD_REBUILD_INSTANCE, evacuate, &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "is not the instance_uuid"));
    g_clear_error(&err);

    r = parse(VN_METHOD_SNAPSHOT_INSTANCE,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"image_id\": \"s1\","
              " \"upload_url\": \"file:///etc/passwd\"}",
              &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "upload_url"));
    g_clear_error(&err);
    o = json_tokener_parse(
        "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\","
        " \"image_id\": \"s1\", \"upload_url\": \"https://u:s3cr3t@img/x?t=tok\"}");
    r = vn_request_parse(vn_method_info(VN_METHOD_SNAPSHOT_INSTANCE), o, &err);
    assert_non_null(r);
    assert_string_equal(r->upload_url, "https://u:s3cr3t@img/x?t=tok");
    /* what the journal keeps has neither the password nor the token */
    journaled = vn_request_args_redacted("snapshot_instance", o);
    assert_null(strstr(json_object_to_json_string(journaled), "s3cr3t"));
    assert_null(strstr(json_object_to_json_string(journaled), "tok"));
}

/* resize_instance: a flavor (validated as a build's) and a destination, both optional. */
static void test_resize_requests(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRequest) r = NULL;

    (void)state;
    r = parse(VN_METHOD_RESIZE_INSTANCE,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"dest_host\": "
              "\"host-b\", \"flavor\": {\"name\": \"m1.small\", \"vcpus\": 2, \"memory_mb\": "
              "256, \"root_gb\": 2}}",
              &err);
    assert_non_null(r);
    assert_string_equal(r->dest_host, "host-b");
    assert_int_equal(r->flavor->vcpus, 2);
    assert_int_equal(r->flavor->root_gb, 2);
    g_clear_pointer(&r, vn_request_free);

    r = parse(VN_METHOD_RESIZE_INSTANCE,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\"}", &err);
    assert_non_null(r);
    assert_null(r->flavor);
    assert_null(r->dest_host);
    g_clear_pointer(&r, vn_request_free);

    r = parse(VN_METHOD_RESIZE_INSTANCE,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"flavor\": "
              "{\"vcpus\": 0, \"memory_mb\": 256}}",
              &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "flavor.vcpus"));
    g_clear_error(&err);

    r = parse(VN_METHOD_RESIZE_INSTANCE,
              "{\"instance_uuid\": \"0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01\", \"dest_host\": "
              "\"../etc\"}",
              &err);
    assert_null(r);
    assert_non_null(strstr(err->message, "dest_host"));
}

static void test_boot_from_volume_without_image(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) o = json_tokener_parse(build_args);
    json_object *inst = json_object_object_get(o, "instance");
    g_autoptr(VnRequest) r1 = NULL;
    g_autoptr(VnRequest) r2 = NULL;

    (void)state;
    json_object_object_del(inst, "image");
    r1 = vn_request_parse(vn_method_info(VN_METHOD_BUILD_AND_RUN_INSTANCE), o, &err);
    assert_null(r1);
    assert_non_null(strstr(err->message, "instance.image: missing"));
    g_clear_error(&err);
    json_object *bdm = json_object_new_array();
    json_object_array_add(bdm, json_tokener_parse(nfs_bd));
    json_object_object_add(o, "block_device_mapping", bdm);
    r2 = vn_request_parse(vn_method_info(VN_METHOD_BUILD_AND_RUN_INSTANCE), o, &err);
    assert_non_null(r2);
    assert_null(r2->spec->image.id);
    assert_int_equal(r2->spec->volumes->len, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_request_as_written),
        cmocka_unit_test(test_build_request_errors),
        cmocka_unit_test(test_other_requests),
        cmocka_unit_test(test_method_lookup),
        cmocka_unit_test(test_pre_live_migration_record),
        cmocka_unit_test(test_url_redaction),
        cmocka_unit_test(test_ports),
        cmocka_unit_test(test_volumes),
        cmocka_unit_test(test_secrets_redacted_in_journaled_args),
        cmocka_unit_test(test_boot_from_volume_without_image),
        cmocka_unit_test(test_rebuild_and_snapshot_requests),
        cmocka_unit_test(test_resize_requests),
        cmocka_unit_test(test_record_round_trip),
        cmocka_unit_test(test_uuid_canonical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
