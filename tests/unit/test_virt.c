/* Unit tests of agent/virt against libvirt's in-process test driver (test:///default). */
#include "tests/unit/testutil.h"

#include <string.h>

#include "agent/virt/conn.h"
#include "agent/virt/domain.h"
#include "agent/virt/domain_xml.h"
#include "agent/virt/host.h"
#include "agent/virt/virt.h"

#define UUID "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e99"

static int events;

static void on_event(const char *uuid, int event, int detail, gpointer data)
{
    (void)event;
    (void)detail;
    (void)data;
    if (strcmp(uuid, UUID) == 0)
        g_atomic_int_inc(&events);
}

static char *xml(void)
{
    g_autoptr(VnDomainSpec) s = vn_domain_spec_new();

    s->uuid = g_strdup(UUID);
    s->domain_name = g_strdup("instance-" UUID);
    s->meta.instance_name = g_strdup("t");
    s->meta.vcpus = 1;
    s->meta.memory_mb = 64;
    s->domain_type = g_strdup("qemu");
    s->console_log = g_strdup("/nonexistent/console.log");
    vn_domain_spec_add_disk(s, "/nonexistent/disk", "qcow2", NULL, NULL, "vda");
    return vn_domain_xml_build(s, NULL);
}

static void test_lifecycle(void **state)
{
    VnVirtHandlers h = { on_event, NULL, NULL, NULL };
    g_autoptr(VnVirtConn) c = vn_virt_conn_new("test:///default", 5, 5, &h);
    g_autoptr(GError) err = NULL;
    g_autofree char *x = xml();
    VnPowerState p;
    gboolean exists = TRUE, graceful = FALSE;

    (void)state;
    assert_true(vn_domain_exists(c, UUID, &exists, &err));
    assert_false(exists);
    assert_false(vn_domain_power_state(c, UUID, &p, &err));
    assert_true(g_error_matches(err, VN_VIRT_ERROR, VN_VIRT_ERROR_NOT_FOUND));
    g_clear_error(&err);

    assert_true(vn_domain_create(c, x, &err));
    assert_true(vn_domain_power_state(c, UUID, &p, &err));
    assert_int_equal(p, VN_POWER_RUNNING);
    assert_true(vn_domain_pause(c, UUID, &err));
    assert_true(vn_domain_power_state(c, UUID, &p, &err));
    assert_int_equal(p, VN_POWER_PAUSED);
    assert_true(vn_domain_unpause(c, UUID, &err));
    assert_true(vn_domain_stop(c, UUID, 5, 1, TRUE, NULL, &graceful, &err));
    assert_true(graceful); /* the test driver's guests obey the power button */
    assert_true(vn_domain_power_state(c, UUID, &p, &err));
    assert_int_equal(p, VN_POWER_SHUTDOWN);
    assert_true(vn_domain_start(c, UUID, &err));
    assert_true(vn_domain_wait_state(c, UUID, VN_POWER_RUNNING, 5, NULL, &err));
    assert_true(vn_domain_managed_save(c, UUID, &err));
    assert_true(vn_domain_power_state(c, UUID, &p, &err));
    assert_int_equal(p, VN_POWER_SHUTDOWN);
    assert_true(vn_domain_start(c, UUID, &err));

    g_auto(GStrv) uuids = vn_domain_list(c, &err);
    assert_true(g_strv_contains((const char *const *)uuids, UUID));
    g_autofree char *back = vn_domain_get_xml(c, UUID, FALSE, &err);
    g_autoptr(VnDomainInfo) info = vn_domain_xml_parse(back, strlen(back), &err);
    assert_true(info->ours);
    assert_string_equal(info->instance_uuid, UUID);

    assert_true(vn_domain_undefine(c, UUID, &err));
    assert_true(vn_domain_exists(c, UUID, &exists, &err));
    assert_false(exists);
    /* removing twice is fine */
    assert_true(vn_domain_undefine(c, UUID, &err));
    /* events arrive through libvirt's event loop thread */
    for (int i = 0; i < 50 && g_atomic_int_get(&events) == 0; i++)
        g_usleep(20000);
    assert_true(g_atomic_int_get(&events) > 0);
}

static void test_create_failure_leaves_nothing(void **state)
{
    g_autoptr(VnVirtConn) c = vn_virt_conn_new("test:///default", 5, 5, NULL);
    g_autoptr(GError) err = NULL;
    gboolean exists = TRUE;
    /* well-formed, with our uuid, but the name is taken by the driver's own domain */
    g_autofree char *clash =
        g_strdup_printf("<domain type='test'><name>test</name><uuid>%s</uuid><memory>65536</memory>"
                        "<os><type>hvm</type></os></domain>",
                        UUID);

    (void)state;
    assert_false(vn_domain_create(c, "<domain type='qemu'><name>x</name></domain", &err));
    assert_non_null(err);
    g_clear_error(&err);
    assert_false(vn_domain_create(c, clash, &err));
    assert_non_null(err);
    assert_true(vn_domain_exists(c, UUID, &exists, &err));
    assert_false(exists);
}

static void test_host_facts(void **state)
{
    g_autoptr(VnVirtConn) c = vn_virt_conn_new("test:///default", 5, 5, NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(VnHostFacts) f = vn_host_facts_read(c, &err);
    g_autofree char *cpu = NULL;

    (void)state;
    assert_non_null(f);
    assert_true(f->cpus > 0);
    assert_true(f->memory_mb > 0);
    assert_string_equal(f->hypervisor_type, "TEST");
    assert_non_null(f->security_models);
    cpu = vn_host_facts_cpu_info_json(f);
    assert_non_null(strstr(cpu, "\"topology\""));
}

/* The label check names each label's model: read once per connection, and only for the
 * connection they were read from. */
static void test_security_models_kept_per_connection(void **state)
{
    g_autoptr(VnVirtConn) c = vn_virt_conn_new("test:///default", 5, 5, NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(VnHostFacts) f = vn_host_facts_read(c, &err);
    g_auto(GStrv) first = NULL;
    g_auto(GStrv) again = NULL;
    g_auto(GStrv) kept = NULL;
    g_auto(GStrv) fake = g_strsplit("selinux,dac", ",", -1);
    virConnectPtr other = virConnectOpen("test:///default");

    (void)state;
    assert_non_null(f);
    assert_non_null(other);
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, &err);
    assert_non_null(conn);
    assert_null(vn_virt_conn_security_models(c, conn)); /* nothing read yet */

    first = vn_host_security_models(c, &err);
    assert_non_null(first);
    assert_true(g_strv_equal((const char *const *)first, (const char *const *)f->security_models));
    kept = vn_virt_conn_security_models(c, conn);
    assert_non_null(kept);
    assert_true(g_strv_equal((const char *const *)kept, (const char *const *)first));

    /* another connection's models are not this one's */
    assert_null(vn_virt_conn_security_models(c, other));
    vn_virt_conn_keep_security_models(c, other, fake);
    assert_null(vn_virt_conn_security_models(c, other));

    /* what is kept is what the next check gets, without reading the host again */
    vn_virt_conn_keep_security_models(c, conn, fake);
    again = vn_host_security_models(c, &err);
    assert_non_null(again);
    assert_true(g_strv_equal((const char *const *)again, (const char *const *)fake));
    virConnectClose(other);
}

static void test_unreachable_uri(void **state)
{
    g_autoptr(VnVirtConn) c =
        vn_virt_conn_new("qemu+unix:///system?socket=/nonexistent/sock", 5, 5, NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, &err);

    (void)state;
    assert_null(conn);
    assert_non_null(err);
    assert_false(vn_virt_conn_is_alive(c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_create_failure_leaves_nothing),
        cmocka_unit_test(test_host_facts),
        cmocka_unit_test(test_security_models_kept_per_connection),
        cmocka_unit_test(test_unreachable_uri),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
