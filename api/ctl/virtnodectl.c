/* api/ctl/virtnodectl.c - the operator's and controller's command-line client.
 *
 * It speaks to agents exactly as a controller does: oslo.messaging 2.0 calls and casts on
 * the control exchange (through scheduler-client's AMQP link), and reads the central
 * database for host capacity.  Settings come from the agent's configuration file
 * ([amqp], [database], [DEFAULT] host), overridden by options. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "api/clilog.h"
#include "api/json.h"
#include "api/methods.h"
#include "scheduler-client/amqp/rpc.h"
#include "scheduler-client/report/report.h"

#define DEFAULT_CONFIG "/etc/virtnode/virtnode.conf"

typedef struct {
    char *config;
    char *url;
    char *exchange;
    gboolean durable; /* [amqp] durable_queues or quorum_queues, as the agents declare */
    char *topic;
    char *host;          /* target agent */
    gboolean host_given; /* -H on the command line */
    char *db;
    char *db_password;
    int timeout;
    gboolean json;
    gboolean no_wait;
    gboolean verbose;
    VnRpc *rpc;
} Ctl;

static void die(int code, const char *fmt, ...) G_GNUC_PRINTF(2, 3) G_GNUC_NORETURN;
static void die(int code, const char *fmt, ...)
{
    va_list ap;

    fputs("virtnodectl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

/* Reads what the client needs from the agent's configuration file. */
static void load_config(Ctl *c)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    const char *path = c->config ? c->config : DEFAULT_CONFIG;
    g_autoptr(GError) err = NULL;

    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &err)) {
        if (c->config)
            die(2, "%s: %s", path, err->message);
        return;
    }
#define FROM(field, section, key)                                                                  \
    if (!c->field)                                                                                 \
        c->field = g_key_file_get_string(kf, section, key, NULL);
    FROM(url, "amqp", "transport_url");
    FROM(exchange, "amqp", "control_exchange");
    FROM(topic, "amqp", "topic");
    FROM(host, "DEFAULT", "host");
    FROM(db, "database", "connection");
#undef FROM
    g_autoptr(GError) e = NULL;
    gboolean d = g_key_file_get_boolean(kf, "amqp", "durable_queues", &e);
    if (!e)
        c->durable = d;
    if (g_key_file_get_boolean(kf, "amqp", "quorum_queues", NULL))
        c->durable = TRUE;
    g_autofree char *pwfile = g_key_file_get_string(kf, "database", "password_file", NULL);
    if (pwfile && *pwfile && !c->db_password) {
        g_autofree char *pw = NULL;
        if (g_file_get_contents(pwfile, &pw, NULL, NULL)) {
            g_strstrip(pw);
            c->db_password = g_steal_pointer(&pw);
        }
    }
}

static void connect_link(Ctl *c)
{
    g_autoptr(GError) err = NULL;
    g_auto(GStrv) urls = NULL;
    VnRpcConfig rc = { 0 };

    if (!c->url)
        c->url =
            g_strdup(g_getenv("VIRTNODE_TRANSPORT_URL") ? g_getenv("VIRTNODE_TRANSPORT_URL")
                                                        : "amqp://guest:guest@127.0.0.1:5672/");
    urls = g_strsplit(c->url, ",", -1);
    for (char **u = urls; *u; u++)
        g_strstrip(*u);
    rc.urls = urls;
    rc.exchange = c->exchange ? c->exchange : "virtnode";
    rc.topic = c->topic ? c->topic : "compute";
    rc.durable = c->durable;
    rc.connection_name = "virtnodectl";
    rc.heartbeat = 30;
    rc.connect_timeout = 5;
    rc.reconnect_min = 1;
    rc.reconnect_max = 5;
    c->rpc = vn_rpc_new(&rc, NULL, &err);
    if (!c->rpc)
        die(2, "%s", err->message);
    vn_rpc_start(c->rpc);
    /* connected, or every broker refused once (one line with the reason, at once), or
     * none answered within the time */
    gint64 end = g_get_monotonic_time() + MIN(c->timeout, 15) * G_TIME_SPAN_SECOND;
    while (!vn_rpc_wait_connected(c->rpc, 0.05)) {
        VnRpcStats st;
        vn_rpc_get_stats(c->rpc, &st);
        if (st.connect_rounds_failed > 0)
            die(1, "cannot reach the message broker: %s", st.last_connect_error);
        if (g_get_monotonic_time() > end)
            die(1, "cannot reach the message broker: no answer within %d s%s%s",
                MIN(c->timeout, 15), *st.last_connect_error ? "; " : "", st.last_connect_error);
    }
}

#define API_VERSION G_STRINGIFY(VN_API_VERSION_MAJOR) "." G_STRINGIFY(VN_API_VERSION_MINOR)

/* The JSON object in @path (a port, a block device); exits when it is not one. */
static json_object *read_object(const char *path)
{
    g_autofree char *text = NULL;
    g_autoptr(GError) err = NULL;
    json_object *o;

    if (!g_file_get_contents(path, &text, NULL, &err))
        die(2, "%s", err->message);
    o = json_tokener_parse(text);
    if (!o || !json_object_is_type(o, json_type_object))
        die(2, "%s: not a JSON object", path);
    return o;
}

/* Calls @method on the target host; exits with the remote failure on error. */
static json_object *call(Ctl *c, const char *host, const char *method, json_object *args,
                         int timeout)
{
    g_autoptr(GError) err = NULL;
    json_object *result = NULL;

    if (!vn_rpc_call(c->rpc, host, method, args, API_VERSION, NULL, timeout, MIN(timeout, 30),
                     &result, &err))
        die(1, "%s on %s: %s", method, host ? host : "(any host)", err->message);
    return result;
}

static void cast(Ctl *c, const char *host, const char *method, json_object *args)
{
    g_autoptr(GError) err = NULL;

    if (!vn_rpc_cast(c->rpc, host, method, args, API_VERSION, NULL, &err))
        die(1, "%s: %s", method, err->message);
    if (!vn_rpc_flush(c->rpc, 10))
        die(1, "the cast %s could not be delivered to the broker", method);
}

static void print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* An outcome without a result worth showing: JSON {@key: method, "host"[, "instance_uuid"]}
 * on stdout with --json, else @line (method, host) on stderr. */
static void print_outcome(Ctl *c, const char *key, const char *line, const char *method,
                          const char *host, const char *uuid)
{
    if (c->json) {
        g_autoptr(json_object) o = json_object_new_object();
        json_object_object_add(o, key, json_object_new_string(method));
        json_object_object_add(o, "host", host ? json_object_new_string(host) : NULL);
        if (uuid)
            json_object_object_add(o, "instance_uuid", json_object_new_string(uuid));
        print_json(o);
    } else {
        fprintf(stderr, line, method, host ? host : "(any host)");
    }
}

/* A request sent without waiting for its outcome. */
static void print_sent(Ctl *c, const char *method, const char *host, const char *uuid)
{
    print_outcome(c, "sent", "%s sent to %s\n", method, host, uuid);
}

/* A call that answered without a result worth showing. */
static void print_done(Ctl *c, const char *method, const char *host, const char *uuid)
{
    print_outcome(c, "done", "%s on %s: done\n", method, host, uuid);
}

static const char *str(json_object *o, const char *key)
{
    json_object *v = vn_json_member(o, key);

    return v ? json_object_get_string(v) : "-";
}

static void print_instance(Ctl *c, json_object *i)
{
    if (c->json) {
        print_json(i);
        return;
    }
    json_object *f = vn_json_member(i, "flavor");
    json_object *fault = vn_json_member(i, "fault");
    printf("uuid:           %s\n", str(i, "uuid"));
    printf("name:           %s\n", str(i, "name"));
    printf("host:           %s\n", str(i, "host"));
    printf("vm_state:       %s\n", str(i, "vm_state"));
    printf("task_state:     %s\n", str(i, "task_state"));
    printf("power_state:    %s\n", str(i, "power_state"));
    printf("flavor:         %s (%s vCPU, %s MiB, %s GiB)\n", str(f, "name"), str(f, "vcpus"),
           str(f, "memory_mb"), str(f, "root_gb"));
    printf("image:          %s\n", str(vn_json_member(i, "image"), "id"));
    printf("launched_at:    %s\n", str(i, "launched_at"));
    printf("security_label: %s\n", str(i, "security_label"));
    if (fault)
        printf("fault:          %s: %s\n", str(fault, "class"), str(fault, "message"));
}

static json_object *uuid_args(const char *uuid)
{
    json_object *a = json_object_new_object();
    g_autofree char *u = vn_uuid_canonical(uuid);

    if (!u)
        die(2, "'%s' is not a uuid", uuid);
    json_object_object_add(a, "instance_uuid", json_object_new_string(u));
    return a;
}

/* The host of an instance: -H, else the central database's instances row, else the
 * configuration's own host. */
static const char *host_of(Ctl *c, const char *uuid)
{
    static char *found;
    g_autoptr(GError) err = NULL;

    if (c->host_given)
        return c->host;
    if (!found && c->db && *c->db)
        found = vn_report_query_instance_host(c->db, c->db_password, uuid, &err);
    if (found)
        return found;
    if (c->host)
        return c->host;
    die(2, "which host runs %s? give -H HOST (%s)", uuid, err ? err->message : "no database");
}

/* Polls get_instance until the instance settles, showing task and progress. */
static void wait_settled(Ctl *c, const char *host, const char *uuid, const char *want)
{
    gint64 end = g_get_monotonic_time() + (gint64)c->timeout * G_TIME_SPAN_SECOND;
    g_autofree char *last = NULL;

    gint64 grace = g_get_monotonic_time() + 10 * G_TIME_SPAN_SECOND;

    for (;;) {
        g_autoptr(json_object) args = uuid_args(uuid);
        g_autoptr(GError) err = NULL;
        g_autoptr(json_object) i = NULL;

        if (!vn_rpc_call(c->rpc, host, "get_instance", args, "1.1", NULL, 30, 0, &i, &err)) {
            /* a build just sent may not have made its record yet */
            if (g_get_monotonic_time() < grace && strstr(err->message, "InstanceNotFound")) {
                g_usleep(200 * 1000);
                continue;
            }
            die(1, "get_instance on %s: %s", host, err->message);
        }
        const char *vm = str(i, "vm_state");
        const char *task = str(i, "task_state");
        g_autofree char *line = g_strdup_printf("%s / %s (%s%%)", vm, task, str(i, "progress"));

        if (!c->json && isatty(1))
            fprintf(stderr, "\r  %-60s", line);
        else if (!c->json && g_strcmp0(line, last) != 0)
            fprintf(stderr, "  %s\n", line);
        g_free(last);
        last = g_strdup(line);
        if (strcmp(task, "-") == 0 || strcmp(task, "null") == 0) {
            if (!c->json && isatty(1))
                fputc('\n', stderr);
            print_instance(c, i);
            if (strcmp(vm, "error") == 0 || (want && strcmp(vm, want) != 0))
                exit(1);
            return;
        }
        if (g_get_monotonic_time() > end)
            die(1, "instance %s did not settle within %d s", uuid, c->timeout);
        g_usleep(500 * 1000);
    }
}

/* An image reference from the command line's --image-* options (NULL without a URL). */
static json_object *image_option(const char *url, const char *sha, const char *id, const char *fmt,
                                 gint64 size)
{
    json_object *im;

    if (!url)
        return NULL;
    if (!sha)
        die(2, "--image-url needs --image-sha256");
    im = json_object_new_object();
    json_object_object_add(im, "id", json_object_new_string(id ? id : sha));
    json_object_object_add(im, "url", json_object_new_string(url));
    json_object_object_add(im, "sha256", json_object_new_string(sha));
    json_object_object_add(im, "disk_format", json_object_new_string(fmt ? fmt : "qcow2"));
    if (size > 0)
        json_object_object_add(im, "size", json_object_new_int64(size));
    return im;
}

/* The parts of a build's (or an evacuation's) arguments given on the command line:
 * --meta KEY=VALUE into @inst's metadata, then @inst, the --port and --volume files. */
static void add_spec_parts(json_object *args, json_object *inst, char **meta, char **ports,
                           char **volumes)
{
    json_object *md = json_object_new_object();
    json_object *nets = json_object_new_array();
    json_object *bdm = json_object_new_array();

    for (char **m = meta; m && *m; m++) {
        char *eq = strchr(*m, '=');
        if (!eq)
            die(2, "--meta '%s' is not KEY=VALUE", *m);
        *eq = '\0';
        json_object_object_add(md, *m, json_object_new_string(eq + 1));
    }
    json_object_object_add(inst, "metadata", md);
    json_object_object_add(args, "instance", inst);
    for (char **p = ports; p && *p; p++)
        json_object_array_add(nets, read_object(*p));
    for (char **v = volumes; v && *v; v++)
        json_object_array_add(bdm, read_object(*v));
    json_object_object_add(args, "networks", nets);
    json_object_object_add(args, "block_device_mapping", bdm);
}

static int cmd_boot(Ctl *c, int argc, char **argv)
{
    g_autofree char *uuid = NULL, *name = NULL, *image_id = NULL, *url = NULL, *sha = NULL;
    g_autofree char *fmt = NULL, *flavor = NULL, *project = NULL, *user = NULL;
    g_auto(GStrv) meta = NULL;
    g_auto(GStrv) ports = NULL;
    g_auto(GStrv) volumes = NULL;
    gint64 size = 0;
    int vcpus = 1, mem = 128, root = 1, eph = 0, swap = 0;
    GOptionEntry e[] = {
        { "uuid", 0, 0, G_OPTION_ARG_STRING, &uuid, "Instance uuid (default: new)", "UUID" },
        { "name", 0, 0, G_OPTION_ARG_STRING, &name, "Instance name", "NAME" },
        { "image-url", 0, 0, G_OPTION_ARG_STRING, &url, "Image URL (http/https)", "URL" },
        { "image-sha256", 0, 0, G_OPTION_ARG_STRING, &sha, "Image sha256", "HEX" },
        { "image-id", 0, 0, G_OPTION_ARG_STRING, &image_id, "Image id (default: the sha256)",
          "ID" },
        { "image-format", 0, 0, G_OPTION_ARG_STRING, &fmt, "qcow2 (default) or raw", "FMT" },
        { "image-size", 0, 0, G_OPTION_ARG_INT64, &size, "Image size in bytes", "N" },
        { "flavor", 0, 0, G_OPTION_ARG_STRING, &flavor, "Flavor name", "NAME" },
        { "vcpus", 0, 0, G_OPTION_ARG_INT, &vcpus, "vCPUs (1)", "N" },
        { "memory-mb", 0, 0, G_OPTION_ARG_INT, &mem, "Memory MiB (128)", "N" },
        { "root-gb", 0, 0, G_OPTION_ARG_INT, &root, "Root disk GiB (1)", "N" },
        { "ephemeral-gb", 0, 0, G_OPTION_ARG_INT, &eph, "Ephemeral disk GiB (0)", "N" },
        { "swap-mb", 0, 0, G_OPTION_ARG_INT, &swap, "Swap MiB (0)", "N" },
        { "meta", 0, 0, G_OPTION_ARG_STRING_ARRAY, &meta, "Metadata KEY=VALUE (repeat)", "KV" },
        { "project", 0, 0, G_OPTION_ARG_STRING, &project, "Project id", "ID" },
        { "user", 0, 0, G_OPTION_ARG_STRING, &user, "User id", "ID" },
        { "port", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &ports,
          "A network port, as JSON in FILE (repeat; docs/rpc-api.md)", "FILE" },
        { "volume", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &volumes,
          "A block device mapping entry, as JSON in FILE (repeat; docs/volumes.md)", "FILE" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- boot an instance");
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) args = json_object_new_object();
    json_object *inst = json_object_new_object();
    json_object *fl = json_object_new_object();

    g_option_context_add_main_entries(ctx, e, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die(2, "boot: %s", err->message);
    if (!name || !url || !sha)
        die(2, "boot needs --name, --image-url and --image-sha256");
    if (!uuid)
        uuid = g_uuid_string_random();
    json_object_object_add(inst, "uuid", json_object_new_string(uuid));
    json_object_object_add(inst, "name", json_object_new_string(name));
    json_object_object_add(inst, "project_id", json_object_new_string(project ? project : "admin"));
    json_object_object_add(inst, "user_id", json_object_new_string(user ? user : "admin"));
    json_object_object_add(fl, "name", json_object_new_string(flavor ? flavor : "custom"));
    json_object_object_add(fl, "vcpus", json_object_new_int(vcpus));
    json_object_object_add(fl, "memory_mb", json_object_new_int(mem));
    json_object_object_add(fl, "root_gb", json_object_new_int(root));
    json_object_object_add(fl, "ephemeral_gb", json_object_new_int(eph));
    json_object_object_add(fl, "swap_mb", json_object_new_int(swap));
    json_object_object_add(fl, "extra_specs", json_object_new_object());
    json_object_object_add(inst, "flavor", fl);
    json_object_object_add(inst, "image", image_option(url, sha, image_id, fmt, size));
    add_spec_parts(args, inst, meta, ports, volumes);
    if (!c->host)
        die(2, "boot: which host? give -H HOST (or [DEFAULT] host in the configuration)");
    cast(c, c->host, "build_and_run_instance", args);
    if (!c->no_wait) {
        fprintf(stderr, "build of %s ('%s') sent to %s\n", uuid, name, c->host);
        wait_settled(c, c->host, uuid, "active");
    } else if (c->json) {
        print_sent(c, "build_and_run_instance", c->host, uuid);
    } else {
        fprintf(stderr, "build of %s ('%s') sent to %s\n", uuid, name, c->host);
        printf("%s\n", uuid);
    }
    return 0;
}

static int cmd_instance_op(Ctl *c, const char *method, const char *want, int argc, char **argv)
{
    gboolean hard = FALSE;
    int lines = 0;
    GOptionEntry e[] = {
        { "hard", 0, 0, G_OPTION_ARG_NONE, &hard, "Hard reboot", NULL },
        { "lines", 0, 0, G_OPTION_ARG_INT, &lines, "Console lines from the end", "N" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("UUID");
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) args = NULL;
    g_autoptr(json_object) res = NULL;
    const char *host;

    g_option_context_add_main_entries(ctx, e, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || argc != 2)
        die(2, "%s UUID: %s", method, err ? err->message : "one uuid is needed");
    args = uuid_args(argv[1]);
    host = host_of(c, argv[1]);
    if (strcmp(method, "reboot_instance") == 0)
        json_object_object_add(args, "reboot_type", json_object_new_string(hard ? "HARD" : "SOFT"));
    if (strcmp(method, "get_console_output") == 0) {
        if (lines > 0)
            json_object_object_add(args, "tail_length", json_object_new_int(lines));
        res = call(c, host, method, args, c->timeout);
        if (c->json) {
            g_autoptr(json_object) o = json_object_new_object();
            json_object_object_add(o, "output", json_object_get(res));
            print_json(o);
        } else {
            fputs(json_object_get_string(res), stdout);
        }
        return 0;
    }
    if (strcmp(method, "get_instance") == 0) {
        res = call(c, host, method, args, c->timeout);
        print_instance(c, res);
        return 0;
    }
    res = call(c, host, method, args, c->timeout);
    if (want)
        wait_settled(c, host, argv[1], want);
    else if (res && json_object_is_type(res, json_type_object))
        print_instance(c, res);
    else
        print_done(c, method, host, argv[1]);
    return 0;
}

static int cmd_list(Ctl *c)
{
    g_autoptr(json_object) args = json_object_new_object();
    g_autoptr(json_object) res = call(c, c->host, "list_instances", args, c->timeout);

    if (c->json) {
        print_json(res);
        return 0;
    }
    printf("%-36s  %-16s  %-10s  %-14s  %s\n", "UUID", "NAME", "VM_STATE", "TASK", "POWER");
    for (size_t i = 0; i < json_object_array_length(res); i++) {
        json_object *o = json_object_array_get_idx(res, i);
        printf("%-36s  %-16.16s  %-10s  %-14s  %s\n", str(o, "uuid"), str(o, "name"),
               str(o, "vm_state"), str(o, "task_state"), str(o, "power_state"));
    }
    return 0;
}

static int cmd_host(Ctl *c, int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    const char *host = argc > 1 ? argv[1] : c->host;
    g_autofree char *text = NULL;
    g_autoptr(json_object) o = NULL;

    if (!host)
        die(2, "host: which host?");
    if (!c->db || !*c->db)
        die(2, "host: no database connection ([database] connection or --db)");
    text = vn_report_query_host(c->db, c->db_password, host, &err);
    if (!text)
        die(1, "%s", err->message);
    o = json_tokener_parse(text);
    if (c->json || !o) {
        printf("%s\n", text);
        return 0;
    }
    json_object *svc = vn_json_member(o, "service");
    json_object *cap = vn_json_member(o, "capacity");
    if (!svc && !cap)
        die(1, "host '%s' has never reported", host);
    double age = svc ? json_object_get_double(vn_json_member(svc, "heartbeat_age_s")) : -1;
    printf("host:                 %s\n", host);
    printf("heartbeat:            %.1f s ago (report_count %s)%s\n", age, str(svc, "report_count"),
           age > 60 ? "  DOWN" : "");
    if (cap) {
        printf("hypervisor:           %s %s on %s\n", str(cap, "hypervisor_type"),
               str(cap, "hypervisor_version"), str(cap, "hypervisor_hostname"));
        printf("vcpus:                %s used of %s (ratio %s)\n", str(cap, "vcpus_used"),
               str(cap, "vcpus"), str(cap, "cpu_allocation_ratio"));
        printf("memory_mb:            %s used of %s, %s free (ratio %s)\n",
               str(cap, "memory_mb_used"), str(cap, "memory_mb"), str(cap, "free_ram_mb"),
               str(cap, "ram_allocation_ratio"));
        printf("local_gb:             %s used of %s, %s free, least available %s\n",
               str(cap, "local_gb_used"), str(cap, "local_gb"), str(cap, "free_disk_gb"),
               str(cap, "disk_available_least"));
        printf("running_vms:          %s\n", str(cap, "running_vms"));
        printf("updated_at:           %s\n", str(cap, "updated_at"));
    }
    printf("instances:            %s\n", str(o, "instances"));
    return 0;
}

static void progress_line(json_object *m)
{
    gint64 mt = json_object_get_int64(vn_json_member(m, "memory_total"));
    gint64 mr = json_object_get_int64(vn_json_member(m, "memory_remaining"));
    gint64 dt = json_object_get_int64(vn_json_member(m, "disk_total"));
    gint64 dr = json_object_get_int64(vn_json_member(m, "disk_remaining"));
    gint64 bps = json_object_get_int64(vn_json_member(m, "memory_bps"));
    int pct = mt > 0 ? (int)((mt - mr) * 100 / mt) : 0;
    char bar[31];

    for (int i = 0; i < 30; i++)
        bar[i] = i < pct * 30 / 100 ? '#' : '.';
    bar[30] = '\0';
    fprintf(stderr, "\r%-9s [%s] mem %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " MiB left",
            str(m, "status"), bar, mr >> 20, mt >> 20);
    if (dt > 0)
        fprintf(stderr, ", disk %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " MiB left", dr >> 20,
                dt >> 20);
    fprintf(stderr, ", %.1f MiB/s, downtime step %s ms, pass %s   ", bps / 1048576.0,
            str(m, "downtime_step_ms"), str(m, "iterations"));
}

static int cmd_resize(Ctl *c, gboolean cold, int argc, char **argv, const char *to);

static int cmd_migrate(Ctl *c, int argc, char **argv)
{
    g_autofree char *to = NULL;
    gboolean block = FALSE, no_block = FALSE, cold = FALSE;
    GOptionEntry e[] = {
        { "to", 0, 0, G_OPTION_ARG_STRING, &to, "Destination host", "HOST" },
        { "cold", 0, 0, G_OPTION_ARG_NONE, &cold, "Stop, move and start (resize_instance)", NULL },
        { "block", 0, 0, G_OPTION_ARG_NONE, &block, "Insist on block migration", NULL },
        { "no-block", 0, 0, G_OPTION_ARG_NONE, &no_block, "Insist on shared storage", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("UUID --to HOST");
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) args = NULL;
    gint64 end = g_get_monotonic_time() + (gint64)c->timeout * G_TIME_SPAN_SECOND;
    const char *host;
    gboolean seen = FALSE;

    g_option_context_add_main_entries(ctx, e, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || argc != 2 || !to)
        die(2, "migrate UUID --to HOST: %s", err ? err->message : "uuid and --to are needed");
    if (cold)
        return cmd_resize(c, TRUE, argc, argv, to);
    args = uuid_args(argv[1]);
    host = host_of(c, argv[1]);
    json_object_object_add(args, "dest_host", json_object_new_string(to));
    json_object_object_add(args, "block_migration",
                           block      ? json_object_new_boolean(TRUE)
                           : no_block ? json_object_new_boolean(FALSE)
                                      : NULL);
    cast(c, host, "live_migration", args);
    if (c->no_wait) {
        print_sent(c, "live_migration", host, argv[1]);
        return 0;
    }
    fprintf(stderr, "live migration of %s from %s to %s requested\n", argv[1], host, to);
    for (;;) {
        g_autoptr(json_object) q = uuid_args(argv[1]);
        g_autoptr(GError) e2 = NULL;
        json_object *m = NULL;
        if (vn_rpc_call(c->rpc, host, "get_migration", q, "1.1", NULL, 10, 0, &m, &e2)) {
            g_autoptr(json_object) mm = m;
            const char *status = str(mm, "status");
            seen = TRUE;
            progress_line(mm);
            if (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
                strcmp(status, "cancelled") == 0 || strcmp(status, "error") == 0) {
                fputc('\n', stderr);
                print_json(mm);
                return strcmp(status, "completed") == 0 ? 0 : 1;
            }
        } else if (seen || g_get_monotonic_time() > end) {
            die(1, "%s", e2->message);
        }
        if (g_get_monotonic_time() > end)
            die(1, "the migration did not end within %d s", c->timeout);
        g_usleep(500 * 1000);
    }
}

/* ------------------------------------------------------------------ move and recover */

typedef struct {
    Ctl *c;
    const char *host;
    const char *uuid;
    gint done; /* set when the call returned */
} Watch;

/* Shows the instance's task and progress on @w->host every half second until the call it
 * watches returns. */
static gpointer watch_progress(gpointer data)
{
    Watch *w = data;
    g_autofree char *last = NULL;

    while (!g_atomic_int_get(&w->done)) {
        g_autoptr(json_object) args = uuid_args(w->uuid);
        g_autoptr(json_object) i = NULL;
        if (vn_rpc_call(w->c->rpc, w->host, "get_instance", args, "1.1", NULL, 10, 0, &i, NULL)) {
            g_autofree char *line = g_strdup_printf("%s / %s (%s%%)", str(i, "vm_state"),
                                                    str(i, "task_state"), str(i, "progress"));
            if (!w->c->json && g_strcmp0(line, last) != 0)
                fprintf(stderr, "  %s on %s\n", line, w->host);
            g_free(last);
            last = g_steal_pointer(&line);
        }
        for (int k = 0; k < 5 && !g_atomic_int_get(&w->done); k++)
            g_usleep(100 * 1000);
    }
    return NULL;
}

/* Calls @method for @uuid on @host, showing the progress the instance's record on
 * @watch_host reports while it runs; exits on failure. */
static json_object *call_watched(Ctl *c, const char *host, const char *watch_host,
                                 const char *method, const char *uuid, json_object *args)
{
    Watch w = { c, watch_host, uuid, 0 };
    GThread *t = c->no_wait ? NULL : g_thread_new("progress", watch_progress, &w);
    g_autoptr(GError) err = NULL;
    json_object *result = NULL;
    gboolean ok;

    ok = vn_rpc_call(c->rpc, host, method, args, API_VERSION, NULL, c->timeout, MIN(c->timeout, 30),
                     &result, &err);
    g_atomic_int_set(&w.done, 1);
    if (t)
        g_thread_join(t);
    if (!ok)
        die(1, "%s on %s: %s", method, host, err->message);
    return result;
}

/* rebuild UUID [--image-*] and evacuate UUID --to HOST [--image-*] [--port F] [--volume F]
 * [--meta K=V]: an evacuation's spec is the central database's record of the instance
 * (name, owner, flavor, image), with its ports, volumes and metadata given again. */
static int cmd_rebuild(Ctl *c, gboolean evacuate, int argc, char **argv)
{
    g_autofree char *url = NULL, *sha = NULL, *image_id = NULL, *fmt = NULL, *to = NULL;
    g_auto(GStrv) ports = NULL, volumes = NULL, meta = NULL;
    gint64 size = 0;
    GOptionEntry e[] = {
        { "to", 0, 0, G_OPTION_ARG_STRING, &to, "evacuate: the host that takes the guest", "HOST" },
        { "image-url", 0, 0, G_OPTION_ARG_STRING, &url, "New image URL", "URL" },
        { "image-sha256", 0, 0, G_OPTION_ARG_STRING, &sha, "New image sha256", "HEX" },
        { "image-id", 0, 0, G_OPTION_ARG_STRING, &image_id, "New image id", "ID" },
        { "image-format", 0, 0, G_OPTION_ARG_STRING, &fmt, "qcow2 (default) or raw", "FMT" },
        { "image-size", 0, 0, G_OPTION_ARG_INT64, &size, "New image size in bytes", "N" },
        { "port", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &ports, "evacuate: a port, JSON in FILE",
          "FILE" },
        { "volume", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &volumes,
          "evacuate: a block device mapping entry, JSON in FILE", "FILE" },
        { "meta", 0, 0, G_OPTION_ARG_STRING_ARRAY, &meta, "evacuate: metadata KEY=VALUE", "KV" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("UUID");
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) args = NULL;
    g_autoptr(json_object) res = NULL;
    json_object *image;
    const char *host;

    g_option_context_add_main_entries(ctx, e, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || argc != 2 || (evacuate && !to))
        die(2, "%s: %s", evacuate ? "evacuate UUID --to HOST" : "rebuild UUID",
            err ? err->message : "a uuid is needed (and --to for evacuate)");
    args = uuid_args(argv[1]);
    image = image_option(url, sha, image_id, fmt, size);
    if (image)
        json_object_object_add(args, "image", json_object_get(image));
    if (evacuate) {
        g_autofree char *text = NULL;
        g_autoptr(json_object) row = NULL;
        json_object *inst = json_object_new_object();
        if (!c->db || !*c->db)
            die(2, "evacuate: the instance's spec comes from the central database: give --db");
        text = vn_report_query_instance(
            c->db, c->db_password, json_object_get_string(vn_json_member(args, "instance_uuid")),
            &err);
        if (!text || !(row = json_tokener_parse(text)))
            die(1, "evacuate: %s", err ? err->message : "the database's row is not JSON");
        for (const char *const *k =
                 (const char *const[]){ "uuid", "name", "project_id", "user_id", "flavor", NULL };
             *k; k++)
            json_object_object_add(inst, *k, json_object_get(vn_json_member(row, *k)));
        json_object_object_add(inst, "image",
                               image ? json_object_get(image)
                                     : json_object_get(vn_json_member(row, "image")));
        add_spec_parts(args, inst, meta, ports, volumes);
        json_object_object_add(args, "recreate", json_object_new_boolean(TRUE));
        fprintf(stderr, "evacuating %s (on %s, %s) to %s\n", argv[1], str(row, "host"),
                str(row, "vm_state"), to);
        host = to;
    } else {
        host = host_of(c, argv[1]);
    }
    if (image)
        json_object_put(image);
    res = call_watched(c, host, host, "rebuild_instance", argv[1], args);
    print_instance(c, res);
    return 0;
}

/* resize UUID --flavor NAME --vcpus N --memory-mb N [--root-gb N] [--to HOST], and
 * migrate UUID --to HOST --cold (the same, flavor unchanged). */
static int cmd_resize(Ctl *c, gboolean cold, int argc, char **argv, const char *to)
{
    g_autofree char *flavor = NULL, *dest = g_strdup(to);
    int vcpus = 0, mem = 0, root = -1, eph = 0, swap = 0;
    GOptionEntry e[] = {
        { "to", 0, 0, G_OPTION_ARG_STRING, &dest, "Destination host (default: its own)", "HOST" },
        { "flavor", 0, 0, G_OPTION_ARG_STRING, &flavor, "New flavor name", "NAME" },
        { "vcpus", 0, 0, G_OPTION_ARG_INT, &vcpus, "vCPUs", "N" },
        { "memory-mb", 0, 0, G_OPTION_ARG_INT, &mem, "Memory MiB", "N" },
        { "root-gb", 0, 0, G_OPTION_ARG_INT, &root, "Root disk GiB (grows only)", "N" },
        { "ephemeral-gb", 0, 0, G_OPTION_ARG_INT, &eph, "Ephemeral disk GiB (unchanged)", "N" },
        { "swap-mb", 0, 0, G_OPTION_ARG_INT, &swap, "Swap MiB (unchanged)", "N" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("UUID");
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) args = NULL;
    g_autoptr(json_object) res = NULL;
    const char *host;

    if (!cold) {
        g_option_context_add_main_entries(ctx, e, NULL);
        if (!g_option_context_parse(ctx, &argc, &argv, &err) || argc != 2 || !vcpus || !mem)
            die(2,
                "resize UUID --vcpus N --memory-mb N [--flavor NAME] [--root-gb N] [--to "
                "HOST]: %s",
                err ? err->message : "a uuid, --vcpus and --memory-mb are needed");
    }
    args = uuid_args(argv[1]);
    host = host_of(c, argv[1]);
    if (dest)
        json_object_object_add(args, "dest_host", json_object_new_string(dest));
    if (!cold) {
        json_object *fl = json_object_new_object();
        if (root < 0) {
            /* the root disk as it is: from what the agent says of the instance */
            g_autoptr(json_object) q = uuid_args(argv[1]);
            g_autoptr(json_object) i = call(c, host, "get_instance", q, c->timeout);
            root = json_object_get_int(vn_json_member(vn_json_member(i, "flavor"), "root_gb"));
        }
        json_object_object_add(fl, "name", json_object_new_string(flavor ? flavor : "custom"));
        json_object_object_add(fl, "vcpus", json_object_new_int(vcpus));
        json_object_object_add(fl, "memory_mb", json_object_new_int(mem));
        json_object_object_add(fl, "root_gb", json_object_new_int(root));
        json_object_object_add(fl, "ephemeral_gb", json_object_new_int(eph));
        json_object_object_add(fl, "swap_mb", json_object_new_int(swap));
        json_object_object_add(fl, "extra_specs", json_object_new_object());
        json_object_object_add(args, "flavor", fl);
    }
    fprintf(stderr, "%s %s on %s%s%s\n", cold ? "cold-migrating" : "resizing", argv[1], host,
            dest ? " to " : "", dest ? dest : "");
    res = call_watched(c, host, host, "resize_instance", argv[1], args);
    print_instance(c, res);
    if (!c->json)
        fprintf(stderr,
                "confirm with 'virtnodectl resize-confirm %s', or revert with "
                "'virtnodectl resize-revert %s'\n",
                argv[1], argv[1]);
    return 0;
}

/* snapshot UUID --image-id ID --upload-url URL */
static int cmd_snapshot(Ctl *c, int argc, char **argv)
{
    g_autofree char *id = NULL, *url = NULL;
    GOptionEntry e[] = {
        { "image-id", 0, 0, G_OPTION_ARG_STRING, &id, "The new image's id", "ID" },
        { "upload-url", 0, 0, G_OPTION_ARG_STRING, &url, "Where to PUT it (http/https)", "URL" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("UUID");
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) args = NULL;
    g_autoptr(json_object) res = NULL;
    const char *host;

    g_option_context_add_main_entries(ctx, e, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || argc != 2 || !id || !url)
        die(2, "snapshot UUID --image-id ID --upload-url URL: %s",
            err ? err->message : "all three are needed");
    args = uuid_args(argv[1]);
    host = host_of(c, argv[1]);
    json_object_object_add(args, "image_id", json_object_new_string(id));
    json_object_object_add(args, "upload_url", json_object_new_string(url));
    res = call_watched(c, host, host, "snapshot_instance", argv[1], args);
    if (c->json)
        print_json(res);
    else
        printf("image %s: %s bytes, sha256 %s%s\n", str(res, "image_id"), str(res, "size"),
               str(res, "sha256"),
               json_object_get_boolean(vn_json_member(res, "quiesced")) ? ", quiesced" : "");
    return 0;
}

/* The central database's migrations row (it outlives the move: the instance's host is then
 * the destination, whose agent never ran the migration), with the source agent's live
 * progress while it runs; the agent alone without a database. */
static int cmd_migration_show(Ctl *c, const char *uuid, json_object *args)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *text = NULL;
    g_autoptr(json_object) row = NULL;
    g_autoptr(json_object) live = NULL;
    const char *status;

    if (c->db && *c->db) {
        text = vn_report_query_migration(c->db, c->db_password, uuid, &err);
        if (!text)
            die(1, "%s", err->message);
        row = json_tokener_parse(text);
        if (!row)
            die(1, "the database's migrations row is not JSON");
        status = str(row, "status");
        if (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
            strcmp(status, "cancelled") == 0 || strcmp(status, "error") == 0) {
            print_json(row);
            return 0;
        }
        /* running: the source host has the live figures */
        if (vn_rpc_call(c->rpc, str(row, "source_host"), "get_migration", args, "1.1", NULL,
                        MIN(c->timeout, 30), 0, &live, NULL)) {
            print_json(live);
            return 0;
        }
        print_json(row);
        return 0;
    }
    live = call(c, host_of(c, uuid), "get_migration", args, c->timeout);
    print_json(live);
    return 0;
}

static int cmd_raw(Ctl *c, gboolean is_call, int argc, char **argv)
{
    g_autoptr(json_object) args = NULL;
    g_autoptr(json_object) res = NULL;

    if (argc < 2)
        die(2, "%s METHOD [JSON-ARGS]", is_call ? "call" : "cast");
    args = argc > 2 ? json_tokener_parse(argv[2]) : json_object_new_object();
    if (!args)
        die(2, "the arguments are not JSON");
    if (!is_call) {
        cast(c, c->host, argv[1], args);
        print_sent(c, argv[1], c->host, NULL);
        return 0;
    }
    res = call(c, c->host, argv[1], args, c->timeout);
    if (res)
        print_json(res);
    else
        printf("null\n");
    return 0;
}

static const char *usage =
    "COMMAND [ARGS]\n\n"
    "Commands (the target agent is -H HOST, default [DEFAULT] host of the configuration):\n"
    "  ping [HOST]                  call ping on HOST\n"
    "  boot --name N --image-url U --image-sha256 H [...]   build an instance, wait for it\n"
    "  delete|start|stop|pause|unpause|suspend|resume UUID\n"
    "  reboot UUID [--hard]\n"
    "  show UUID                    the instance record\n"
    "  list                         the instances of the host\n"
    "  console UUID [--lines N]     the tail of the serial console\n"
    "  host [HOST]                  capacity and heartbeat age (central database)\n"
    "  migrate UUID --to HOST [--block|--no-block]   live migration with progress\n"
    "  migrate UUID --to HOST --cold   stop, move and start there (confirm or revert next)\n"
    "  resize UUID --vcpus N --memory-mb N [--root-gb N] [--flavor NAME] [--to HOST]\n"
    "  resize-confirm UUID | resize-revert UUID   end a resize or cold migration\n"
    "  rebuild UUID [--image-url U --image-sha256 H ...]   a new root disk, same guest\n"
    "  evacuate UUID --to HOST [--port FILE] [--volume FILE] [--meta K=V]   a dead host's\n"
    "                               guest brought up on HOST (its spec: central database)\n"
    "  snapshot UUID --image-id ID --upload-url URL   upload an image of its root disk\n"
    "  migration-show UUID | migration-abort UUID | migration-force-complete UUID\n"
    "  host-disable [REASON] | host-enable   the host refuses (or takes again) new guests\n"
    "  maintenance on [REASON] | maintenance off   disable for maintenance; lists what runs\n"
    "  attach-volume UUID FILE | detach-volume UUID VOLUME_ID   a volume (JSON entry in FILE)\n"
    "  attach-port UUID FILE | detach-port UUID PORT_ID         a network port (JSON in FILE)\n"
    "  call METHOD [JSON] | cast METHOD [JSON]   raw RPC";

int main(int argc, char **argv)
{
    Ctl c = { .durable = TRUE };
    GOptionEntry e[] = {
        { "config", 'c', 0, G_OPTION_ARG_FILENAME, &c.config, "Configuration file", "FILE" },
        { "url", 0, 0, G_OPTION_ARG_STRING, &c.url, "Broker URL(s)", "URL" },
        { "exchange", 0, 0, G_OPTION_ARG_STRING, &c.exchange, "Control exchange", "NAME" },
        { "topic", 0, 0, G_OPTION_ARG_STRING, &c.topic, "RPC topic", "NAME" },
        { "host", 'H', 0, G_OPTION_ARG_STRING, &c.host, "Target host", "HOST" },
        { "db", 0, 0, G_OPTION_ARG_STRING, &c.db, "Database connection", "CONNINFO" },
        { "timeout", 't', 0, G_OPTION_ARG_INT, &c.timeout, "Seconds to wait (300)", "S" },
        { "json", 'j', 0, G_OPTION_ARG_NONE, &c.json, "JSON output", NULL },
        { "no-wait", 0, 0, G_OPTION_ARG_NONE, &c.no_wait, "Do not wait for the outcome", NULL },
        { "verbose", 'v', 0, G_OPTION_ARG_NONE, &c.verbose, "Show the link's messages", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new(usage);
    g_autoptr(GError) err = NULL;
    const char *cmd;
    int rc;

    g_option_context_add_main_entries(ctx, e, NULL);
    /* the common options go anywhere (before or after the command); a command's own
     * options are left for its parser */
    g_option_context_set_ignore_unknown_options(ctx, TRUE);
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die(2, "%s", err->message);
    vn_cli_log_init(c.verbose);
    if (argc < 2) {
        g_autofree char *help = g_option_context_get_help(ctx, TRUE, NULL);
        fputs(help, stderr);
        return 2;
    }
    if (c.timeout <= 0)
        c.timeout = 300;
    c.host_given = c.host != NULL;
    load_config(&c);
    cmd = argv[1];
    argc--;
    argv++;
    if (*cmd == '-')
        die(2, "unknown option %s (see --help)", cmd);
    /* commands without options of their own: what looks like one is a mistake */
    static const char *const parsed[] = { "boot",     "delete",  "start",    "stop",   "pause",
                                          "unpause",  "suspend", "resume",   "reboot", "show",
                                          "console",  "migrate", "call",     "cast",   "rebuild",
                                          "evacuate", "resize",  "snapshot", NULL };
    if (!g_strv_contains(parsed, cmd)) {
        for (int i = 1; i < argc; i++) {
            if (argv[i][0] == '-' && argv[i][1])
                die(2, "%s: unknown option %s (see --help)", cmd, argv[i]);
        }
    }
    if (strcmp(cmd, "host") == 0)
        return cmd_host(&c, argc, argv);
    connect_link(&c);
    if (strcmp(cmd, "ping") == 0) {
        g_autoptr(json_object) args = json_object_new_object();
        g_autoptr(json_object) res = NULL;
        gint64 t0 = g_get_monotonic_time();
        json_object_object_add(args, "arg", json_object_new_string("virtnodectl"));
        res = call(&c, argc > 1 ? argv[1] : c.host, "ping", args, MIN(c.timeout, 30));
        if (c.json)
            print_json(res);
        else
            printf("%s answered in %.1f ms\n", str(res, "host"),
                   (g_get_monotonic_time() - t0) / 1000.0);
        rc = 0;
    } else if (strcmp(cmd, "boot") == 0) {
        rc = cmd_boot(&c, argc, argv);
    } else if (strcmp(cmd, "delete") == 0) {
        rc = cmd_instance_op(&c, "terminate_instance", NULL, argc, argv);
    } else if (strcmp(cmd, "start") == 0 || strcmp(cmd, "stop") == 0 || strcmp(cmd, "pause") == 0 ||
               strcmp(cmd, "unpause") == 0 || strcmp(cmd, "suspend") == 0 ||
               strcmp(cmd, "resume") == 0 || strcmp(cmd, "reboot") == 0) {
        g_autofree char *method = g_strdup_printf("%s_instance", cmd);
        rc = cmd_instance_op(&c, method, NULL, argc, argv);
    } else if (strcmp(cmd, "show") == 0) {
        rc = cmd_instance_op(&c, "get_instance", NULL, argc, argv);
    } else if (strcmp(cmd, "console") == 0) {
        rc = cmd_instance_op(&c, "get_console_output", NULL, argc, argv);
    } else if (strcmp(cmd, "list") == 0) {
        rc = cmd_list(&c);
    } else if (strcmp(cmd, "host-disable") == 0 || strcmp(cmd, "host-enable") == 0 ||
               strcmp(cmd, "maintenance") == 0) {
        gboolean maint = strcmp(cmd, "maintenance") == 0;
        g_autoptr(json_object) args = json_object_new_object();
        g_autoptr(json_object) res = NULL;
        const char *reason = NULL;
        gboolean on;
        if (maint) {
            if (argc < 2 || argc > 3 || (strcmp(argv[1], "on") != 0 && strcmp(argv[1], "off") != 0))
                die(2, "maintenance on [REASON] | maintenance off");
            on = strcmp(argv[1], "on") == 0;
            reason = argc == 3 ? argv[2] : NULL;
            json_object_object_add(args, "mode", json_object_new_boolean(on));
        } else {
            if (argc > 2)
                die(2, "%s [REASON]", cmd);
            on = strcmp(cmd, "host-enable") == 0;
            reason = argc == 2 ? argv[1] : NULL;
            json_object_object_add(args, "enabled", json_object_new_boolean(on));
        }
        if (reason)
            json_object_object_add(args, "reason", json_object_new_string(reason));
        if (!c.host)
            die(2, "%s: which host? give -H HOST", cmd);
        res =
            call(&c, c.host, maint ? "host_maintenance_mode" : "set_host_enabled", args, c.timeout);
        print_json(res);
        rc = 0;
    } else if (strcmp(cmd, "attach-volume") == 0 || strcmp(cmd, "detach-volume") == 0 ||
               strcmp(cmd, "attach-port") == 0 || strcmp(cmd, "detach-port") == 0) {
        gboolean attach = g_str_has_prefix(cmd, "attach");
        gboolean volume = g_str_has_suffix(cmd, "volume");
        g_autoptr(json_object) args = NULL;
        g_autoptr(json_object) res = NULL;
        if (argc != 3)
            die(2, "%s UUID %s", cmd, attach ? "FILE" : volume ? "VOLUME_ID" : "PORT_ID");
        args = uuid_args(argv[1]);
        if (attach)
            json_object_object_add(args, volume ? "block_device" : "port", read_object(argv[2]));
        else
            json_object_object_add(args, volume ? "volume_id" : "port_id",
                                   json_object_new_string(argv[2]));
        res = call(&c, host_of(&c, argv[1]),
                   volume ? (attach ? "attach_volume" : "detach_volume")
                          : (attach ? "attach_interface" : "detach_interface"),
                   args, c.timeout);
        if (c.json && res)
            print_json(res);
        else
            print_done(&c, cmd, host_of(&c, argv[1]), argv[1]);
        rc = 0;
    } else if (strcmp(cmd, "migrate") == 0) {
        rc = cmd_migrate(&c, argc, argv);
    } else if (strcmp(cmd, "rebuild") == 0 || strcmp(cmd, "evacuate") == 0) {
        rc = cmd_rebuild(&c, strcmp(cmd, "evacuate") == 0, argc, argv);
    } else if (strcmp(cmd, "resize") == 0) {
        rc = cmd_resize(&c, FALSE, argc, argv, NULL);
    } else if (strcmp(cmd, "resize-confirm") == 0 || strcmp(cmd, "resize-revert") == 0) {
        g_autoptr(json_object) args = NULL;
        g_autoptr(json_object) res = NULL;
        if (argc != 2)
            die(2, "%s UUID", cmd);
        args = uuid_args(argv[1]);
        res = call(&c, host_of(&c, argv[1]),
                   strcmp(cmd, "resize-confirm") == 0 ? "confirm_resize" : "revert_resize", args,
                   c.timeout);
        print_instance(&c, res);
        rc = 0;
    } else if (strcmp(cmd, "snapshot") == 0) {
        rc = cmd_snapshot(&c, argc, argv);
    } else if (strcmp(cmd, "migration-show") == 0 || strcmp(cmd, "migration-abort") == 0 ||
               strcmp(cmd, "migration-force-complete") == 0) {
        const char *method = strcmp(cmd, "migration-show") == 0 ? "get_migration"
                             : strcmp(cmd, "migration-abort") == 0
                                 ? "live_migration_abort"
                                 : "live_migration_force_complete";
        g_autoptr(json_object) args = NULL;
        if (argc != 2)
            die(2, "%s UUID", cmd);
        args = uuid_args(argv[1]);
        if (strcmp(method, "get_migration") == 0) {
            rc = cmd_migration_show(&c, argv[1], args);
        } else {
            cast(&c, host_of(&c, argv[1]), method, args);
            print_sent(&c, method, host_of(&c, argv[1]), argv[1]);
            rc = 0;
        }
    } else if (strcmp(cmd, "call") == 0 || strcmp(cmd, "cast") == 0) {
        rc = cmd_raw(&c, strcmp(cmd, "call") == 0, argc, argv);
    } else {
        die(2, "unknown command '%s' (see --help)", cmd);
    }
    vn_rpc_free(c.rpc);
    return rc;
}
