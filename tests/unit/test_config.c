/* Unit tests of agent/config: the option table, its errors, the dump and the reference. */
#include "tests/unit/testutil.h"

#include <string.h>

#include "agent/base/config.h"
#include "api/status_server.h"
#include "scheduler-client/amqp/url.h"
#include "scheduler-client/report/report.h"

static VnConfig *load(const char *text, GError **error)
{
    return vn_config_load_data(text, strlen(text), "test.conf", error);
}

static void test_defaults(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) c = vn_config_load(NULL, &err);

    (void)state;
    assert_non_null(c);
    assert_string_equal(c->state_path, "/var/lib/virtnode");
    assert_string_equal(c->instances_path, "/var/lib/virtnode/instances");
    assert_string_equal(c->amqp_control_exchange, "virtnode");
    assert_string_equal(c->amqp_topic, "compute");
    assert_string_equal(c->libvirt_uri, "qemu:///system");
    assert_int_equal(c->virt_type, VN_VIRT_TYPE_KVM);
    assert_int_equal(c->max_concurrent_builds, 10);
    assert_int_equal(c->max_concurrent_live_migrations, 1);
    assert_int_equal(c->report_interval, 10);
    assert_int_equal(c->heartbeat_interval, 10);
    assert_int_equal(c->service_down_time, 60);
    assert_int_equal(c->reserved_host_memory_mb, 512);
    assert_true(c->cpu_allocation_ratio == 4.0);
    assert_true(c->ram_allocation_ratio == 1.0);
    assert_int_equal(c->live_migration_downtime, 500);
    assert_int_equal(c->live_migration_downtime_steps, 10);
    assert_int_equal(c->live_migration_completion_timeout, 800);
    assert_string_equal(c->api_listen, "127.0.0.1:8775");
    assert_string_equal(c->host, g_get_host_name());
    assert_string_equal(c->amqp_transport_url[0], "amqp://guest:guest@127.0.0.1:5672/");
    assert_null(c->amqp_transport_url[1]);
}

static void test_values_and_expansion(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) c = load("[DEFAULT]\nhost = node-7\nstate_path = /srv/vn\n"
                                 "cpu_allocation_ratio = 16\n"
                                 "[amqp]\ntransport_url = amqp://a:b@h1:5672/, amqps://c:d@h2/vh\n"
                                 "durable_queues = yes\n"
                                 "[libvirt]\nvirt_type = qemu\n",
                                 &err);

    (void)state;
    assert_non_null(c);
    assert_string_equal(c->host, "node-7");
    assert_string_equal(c->instances_path, "/srv/vn/instances");
    assert_string_equal(c->live_migration_target_uri, "qemu+tcp://node-7/system");
    assert_true(c->cpu_allocation_ratio == 16.0);
    assert_true(c->amqp_durable_queues);
    assert_int_equal(c->virt_type, VN_VIRT_TYPE_QEMU);
    assert_string_equal(c->amqp_transport_url[0], "amqp://a:b@h1:5672/");
    assert_string_equal(c->amqp_transport_url[1], "amqps://c:d@h2/vh");
    assert_null(c->amqp_transport_url[2]);
}

static void expect_error(const char *text, const char *needle)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) c = load(text, &err);

    assert_null(c);
    assert_non_null(err);
    if (!strstr(err->message, needle))
        fail_msg("error '%s' does not contain '%s'", err->message, needle);
}

static void test_errors_name_file_section_key(void **state)
{
    (void)state;
    vn_config_set_check("amqp", "transport_url", vn_amqp_url_list_check);
    vn_config_set_check("database", "connection", vn_report_conninfo_check);
    vn_config_set_check("api", "listen", vn_status_listen_check);
    expect_error("[DEFAULT]\nbogus = 1\n", "test.conf: [DEFAULT] bogus: unknown option");
    expect_error("[nosuch]\nx = 1\n", "test.conf: [nosuch]: unknown section");
    expect_error("[DEFAULT]\nreport_interval = ten\n",
                 "test.conf: [DEFAULT] report_interval: 'ten' is not an integer");
    expect_error("[DEFAULT]\nreport_interval = 0\n",
                 "[DEFAULT] report_interval: 0 is out of range");
    expect_error("[DEFAULT]\ncpu_allocation_ratio = -1\n", "cpu_allocation_ratio");
    expect_error("[libvirt]\nvirt_type = xen\n", "'xen' is not one of: kvm, qemu");
    expect_error("[amqp]\ndurable_queues = maybe\n", "is not a boolean");
    expect_error("[amqp]\ntransport_url = http://h/\n", "must start with amqp:// or amqps://");
    expect_error("[database]\nconnection = host=x port\n", "not a PostgreSQL connection string");
    expect_error("[api]\nlisten = nowhere\n", "[api] listen");
    expect_error("[DEFAULT]\nstate_path = relative\n", "must be an absolute path");
    expect_error("[libvirt]\nguest_uid_min = 5000\nguest_uid_max = 4000\n", "guest_uid_max");
    expect_error("[libvirt]\ncpu_mode = custom\n", "cpu_mode = custom needs a model");
    expect_error("not an ini file", "test.conf");
    /* a value that is not UTF-8, also for a key every later check reads */
    expect_error("[DEFAULT]\nhost = compute-1\xff\xfe\n", "test.conf: [DEFAULT] host");
    expect_error("[amqp]\ntopic = a\xc3\n", "test.conf: [amqp] topic");
}

static void test_all_problems_reported_together(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) c = load("[DEFAULT]\nbogus = 1\nreport_interval = x\n", &err);

    (void)state;
    assert_null(c);
    assert_non_null(strstr(err->message, "bogus"));
    assert_non_null(strstr(err->message, "report_interval"));
}

static void test_dump_lists_every_option_masked(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) c = load("[amqp]\ntransport_url = amqp://user:s3cret@h/\n"
                                 "[database]\nconnection = host=db password=hunter2 user=x\n",
                                 &err);
    g_autofree char *dump = NULL;
    g_autofree char *md = vn_config_reference_markdown();

    (void)state;
    assert_non_null(c);
    dump = vn_config_dump(c);
    assert_null(strstr(dump, "s3cret"));
    assert_null(strstr(dump, "hunter2"));
    assert_non_null(strstr(dump, "transport_url = amqp://user:***@h/"));
    /* every option of the reference appears in the dump, with its default */
    g_auto(GStrv) lines = g_strsplit(md, "\n", -1);
    int n = 0;
    for (char **l = lines; *l; l++) {
        if (!g_str_has_prefix(*l, "| `"))
            continue;
        g_autofree char *key = g_strndup(*l + 3, strchr(*l + 3, '`') - (*l + 3));
        g_autofree char *needle = g_strdup_printf("\n%s = ", key);
        if (!strstr(dump, needle))
            fail_msg("option %s missing from the dump", key);
        n++;
    }
    assert_true(n > 60);
    /* the dump can be loaded back */
    g_autoptr(VnConfig) again = load(dump, &err);
    assert_non_null(again);
}

/* docs/configuration.md is generated from the table and must be current. */
static void test_reference_matches_docs(void **state)
{
    g_autofree char *path = vn_test_source_path("docs/configuration.md");
    g_autofree char *doc = NULL;
    g_autofree char *md = vn_config_reference_markdown();

    (void)state;
    if (g_getenv("VN_UPDATE_GOLDEN")) {
        vn_test_write(path, md, strlen(md));
        return;
    }
    if (!g_file_get_contents(path, &doc, NULL, NULL))
        fail_msg("%s missing: run 'virtnoded --config-reference > docs/configuration.md'", path);
    if (strcmp(doc, md) != 0)
        fail_msg("docs/configuration.md is stale: run "
                 "'build/bin/virtnoded --config-reference > docs/configuration.md'");
}

static void test_restart_needed(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) a = load("[DEFAULT]\nlog_level = info\nhost = h1\n", &err);
    g_autoptr(VnConfig) b = load("[DEFAULT]\nlog_level = debug\nhost = h2\n", &err);
    g_auto(GStrv) names = vn_config_restart_needed(a, b);

    (void)state;
    assert_int_equal(g_strv_length(names), 2); /* host, and live_migration_target_uri ($host) */
    assert_true(g_strv_contains((const char *const *)names, "[DEFAULT] host"));
}

/* A reload applies only the reloadable options; the rest keep their running values. */
static void test_reload_merge(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) run =
        load("[DEFAULT]\nlog_level = info\ninstances_path = /a\nhost = h1\n", &err);
    g_autoptr(VnConfig) next = load("[DEFAULT]\nlog_level = debug\ninstances_path = /b\nhost = h1\n"
                                    "[amqp]\ntransport_url = amqp://u:p@x:1/,amqp://u:p@y:2/\n",
                                    &err);
    g_auto(GStrv) kept = NULL;

    (void)state;
    assert_non_null(run);
    assert_non_null(next);
    kept = vn_config_reload_merge(next, run);
    assert_true(g_strv_contains((const char *const *)kept, "[DEFAULT] instances_path"));
    assert_true(g_strv_contains((const char *const *)kept, "[amqp] transport_url"));
    assert_string_equal(next->instances_path, "/a");
    assert_int_equal(g_strv_length(next->amqp_transport_url),
                     g_strv_length(run->amqp_transport_url));
    assert_int_equal(next->log_level, VN_LOG_LEVEL_DEBUG); /* reloadable: applied */
}

/* Mutually referring $names cannot blow up: the load fails fast, naming the option. */
static void test_expansion_bomb(void **state)
{
    GString *text = g_string_new("[DEFAULT]\n");
    g_autoptr(GError) err = NULL;
    gint64 t0 = g_get_monotonic_time();

    (void)state;
    /* three options referring to each other four times a level: 4^8 references */
    g_string_append(text, "host = $instances_path$instances_path$instances_path$instances_path\n"
                          "state_path = /$host$host$host$host\n"
                          "instances_path = /$state_path$state_path$state_path$state_path\n");
    g_autoptr(VnConfig) c = vn_config_load_data(text->str, text->len, "bomb.conf", &err);
    assert_null(c);
    assert_non_null(err);
    if (!strstr(err->message, "[DEFAULT] state_path") || !strstr(err->message, "expand beyond"))
        fail_msg("%s", err->message);
    assert_true(g_get_monotonic_time() - t0 < 5 * G_USEC_PER_SEC);
    g_string_free(text, TRUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values_and_expansion),
        cmocka_unit_test(test_errors_name_file_section_key),
        cmocka_unit_test(test_all_problems_reported_together),
        cmocka_unit_test(test_dump_lists_every_option_masked),
        cmocka_unit_test(test_reference_matches_docs),
        cmocka_unit_test(test_restart_needed),
        cmocka_unit_test(test_reload_merge),
        cmocka_unit_test(test_expansion_bomb),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
