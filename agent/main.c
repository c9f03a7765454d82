/* agent/main.c - virtnoded, the compute node agent.
 *
 *   virtnoded [--config FILE] [--check-config | --dump-config | --config-reference]
 *   virtnoded --version
 *
 * Exit status: 0 after a graceful stop or a successful check; 1 when the agent cannot
 * start; 2 for a bad command line or configuration. */
#include <stdio.h>
#include <stdlib.h>

#include <errno.h>
#include <malloc.h>
#include <unistd.h>

#include <sys/stat.h>

#include <glib.h>

#include "agent/agent.h"
#include "agent/base/config.h"
#include "agent/base/log.h"
#include "api/status_server.h"
#include "scheduler-client/amqp/url.h"
#include "scheduler-client/report/report.h"

/* A password file must exist and be readable by the agent when it is named: found at
 * --check-config, not at the first database connection. */
static gboolean password_file_check(const char *value, GError **error)
{
    if (!*value)
        return TRUE;
    if (access(value, R_OK) != 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno), "'%s' cannot be read: %s",
                    value, g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

static void install_checks(void)
{
    vn_config_set_check("database", "password_file", password_file_check);
    vn_config_set_check("amqp", "transport_url", vn_amqp_url_list_check);
    vn_config_set_check("database", "connection", vn_report_conninfo_check);
    vn_config_set_check("api", "listen", vn_status_listen_check);
}

int main(int argc, char **argv)
{
    g_autofree char *config_path = NULL;
    gboolean check = FALSE, dump = FALSE, reference = FALSE, version = FALSE;
    GOptionEntry entries[] = {
        { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path,
          "Configuration file (default " VN_CONFIG_DEFAULT_PATH ")", "FILE" },
        { "check-config", 0, 0, G_OPTION_ARG_NONE, &check,
          "Check the configuration and exit (status 2 when it is wrong)", NULL },
        { "dump-config", 0, 0, G_OPTION_ARG_NONE, &dump,
          "Print every option with its value and default, then exit", NULL },
        { "config-reference", 0, 0, G_OPTION_ARG_NONE, &reference,
          "Print the configuration reference (Markdown), then exit", NULL },
        { "version", 'V', 0, G_OPTION_ARG_NONE, &version, "Print the version, then exit", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- virtnode compute node agent");
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) cfg = NULL;
    const char *path;
    VnAgent *agent;
    int rc;

    /* what the agent creates is private unless it says otherwise (guest disks 0600, the
     * journal 0600): the modes never depend on the umask the service manager passed */
    umask(077);
    /* glibc gives every thread that allocates an arena of its own (up to 8 per core), and
     * each keeps what its thread freed: with a build pool of 10 that is most of an idle
     * agent's growth.  Two arenas serve the agent's few busy threads (docs/benchmarks.md,
     * "Memory"); MALLOC_ARENA_MAX still decides when set. */
    if (!g_getenv("MALLOC_ARENA_MAX"))
        mallopt(M_ARENA_MAX, 2);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "virtnoded: %s\n", err->message);
        return 2;
    }
    if (version) {
        printf("virtnoded %s\n", VIRTNODE_VERSION);
        return 0;
    }
    vn_log_init();
    install_checks();
    if (reference) {
        g_autofree char *md = vn_config_reference_markdown();
        fputs(md, stdout);
        return 0;
    }
    /* the default file is optional; a file named on the command line is not */
    path = config_path
               ? config_path
               : (g_file_test(VN_CONFIG_DEFAULT_PATH, G_FILE_TEST_EXISTS) ? VN_CONFIG_DEFAULT_PATH
                                                                          : NULL);
    cfg = vn_config_load(path, &err);
    if (!cfg) {
        fprintf(stderr, "virtnoded: configuration error:\n%s\n", err->message);
        return 2;
    }
    if (check) {
        printf("%s: configuration OK\n", path ? path : "(defaults)");
        return 0;
    }
    if (dump) {
        g_autofree char *text = vn_config_dump(cfg);
        fputs(text, stdout);
        return 0;
    }
    vn_log_configure(cfg->log_target, cfg->log_format, cfg->log_level);
    if (!path)
        g_message("no %s: running with the defaults", VN_CONFIG_DEFAULT_PATH);

    agent = vn_agent_new(cfg, path);
    if (!vn_agent_start(agent, &err)) {
        g_critical("cannot start: %s", err->message);
        vn_agent_free(agent);
        return 1;
    }
    rc = vn_agent_run(agent);
    vn_agent_free(agent);
    return rc;
}
