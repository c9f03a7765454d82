/* api/instance.h - the instance record of the contract: what a build asks for (flavor,
 * image, metadata) and what the agent knows of the instance since (states, times, fault).
 *
 * States follow Nova's model: vm_state x task_state x power_state, with Nova's names and
 * power-state integers, so a controller written for Nova reads them unchanged.  The same
 * JSON form travels in RPC results, the local journal and the central database. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#include "api/port.h"
#include "api/volume.h"

typedef enum {
    VN_VM_BUILDING,
    VN_VM_ACTIVE,
    VN_VM_STOPPED,
    VN_VM_PAUSED,
    VN_VM_SUSPENDED,
    VN_VM_ERROR,
    VN_VM_DELETED,
    VN_VM_RESIZED, /* moved or resized, running on its new host; confirm or revert next */
    VN_VM_LAST
} VnVmState;

typedef enum {
    VN_TASK_NONE,
    VN_TASK_SCHEDULING,
    VN_TASK_BLOCK_DEVICE_MAPPING,
    VN_TASK_NETWORKING,
    VN_TASK_SPAWNING,
    VN_TASK_POWERING_OFF,
    VN_TASK_POWERING_ON,
    VN_TASK_REBOOTING,
    VN_TASK_REBOOTING_HARD,
    VN_TASK_PAUSING,
    VN_TASK_UNPAUSING,
    VN_TASK_SUSPENDING,
    VN_TASK_RESUMING,
    VN_TASK_DELETING,
    VN_TASK_MIGRATING,
    VN_TASK_REBUILDING,       /* rebuild and evacuate: the old guest is going */
    VN_TASK_REBUILD_SPAWNING, /* its new domain is being made */
    VN_TASK_IMAGE_SNAPSHOT,   /* snapshot: the point-in-time copy is being taken */
    VN_TASK_IMAGE_UPLOADING,  /* snapshot: the image is being converted and uploaded */
    VN_TASK_RESIZE_PREP,      /* resize/cold migration: the destination claims */
    VN_TASK_RESIZE_MIGRATING, /* the guest is stopped, its disks go to the destination */
    VN_TASK_RESIZE_MIGRATED,  /* the source's copy, kept until confirm or revert */
    VN_TASK_RESIZE_FINISH,    /* the destination starts the guest */
    VN_TASK_RESIZE_CONFIRMING,
    VN_TASK_RESIZE_REVERTING,
    VN_TASK_LAST
} VnTaskState;

/* Nova's power_state integers (2 and 5 unused). */
typedef enum {
    VN_POWER_NOSTATE = 0,
    VN_POWER_RUNNING = 1,
    VN_POWER_PAUSED = 3,
    VN_POWER_SHUTDOWN = 4,
    VN_POWER_CRASHED = 6,
    VN_POWER_SUSPENDED = 7,
} VnPowerState;

typedef struct {
    char *name;
    int vcpus;
    int memory_mb;
    int root_gb;
    int ephemeral_gb;
    int swap_mb;
    GHashTable *extra_specs; /* char* -> char* */
} VnFlavor;

typedef struct {
    char *id;
    char *url;          /* redacted (vn_url_redact): what records, replies and logs show */
    char *download_url; /* as the request gave it, credentials included: in memory only,
                         * for the download; never serialised (NULL in a record read back) */
    char *sha256;       /* lower-case hex */
    char *disk_format;  /* "qcow2" or "raw" */
    gint64 size;        /* bytes; 0 = not declared */
    int min_disk;       /* GiB */
    int min_ram;        /* MiB */
} VnImageRef;

typedef struct {
    char *uuid;
    char *name;
    char *project_id;
    char *user_id;
    VnFlavor flavor;
    VnImageRef image;
    GHashTable *metadata; /* char* -> char* */
    GPtrArray *ports;     /* VnPortSpec*: the guest's network ports, in device order */
    GPtrArray *volumes;   /* VnVolumeSpec*: attached volumes, without their secrets; image.id
                           * is NULL when the guest boots from one of them */
    char *user_data;      /* base64, as the controller sent it (config drive), or NULL */

    char *host;
    VnVmState vm_state;
    VnTaskState task_state;
    VnPowerState power_state;
    gint64 created_at; /* unix seconds; 0 = not set */
    gint64 launched_at;
    gint64 terminated_at;
    gint64 updated_at;
    int progress; /* percent of the current task, e.g. an image download */
    char *fault_class;
    char *fault_message;
    gint64 fault_at;
    int guest_uid;        /* per-guest DAC identity, 0 when none */
    char *security_label; /* labels read back from the running guest, "model:label;..." */
    char *request_id;     /* the request that last changed the record */
    gint64 generation;    /* +1 on every change, carried across hosts by live migration, so
                           * the central database never takes an older state over a newer */
} VnInstanceRecord;

VnInstanceRecord *vn_instance_record_new(void);
VnInstanceRecord *vn_instance_record_copy(const VnInstanceRecord *rec);
void vn_instance_record_free(VnInstanceRecord *rec);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnInstanceRecord, vn_instance_record_free)

const char *vn_vm_state_name(VnVmState s);
const char *vn_task_state_name(VnTaskState s); /* NULL for VN_TASK_NONE */
gboolean vn_vm_state_from_name(const char *name, VnVmState *out);
gboolean vn_task_state_from_name(const char *name, VnTaskState *out); /* NULL -> NONE */
gboolean vn_power_state_valid(int value);

/* The build part of the contract: the "instance" argument of build_and_run_instance.
 * Validates every field and fills @rec's spec fields (uuid canonicalised). */
gboolean vn_instance_spec_parse(json_object *instance, const char *path, VnInstanceRecord *rec,
                                GError **error);

/* A flavor ("flavor" of an instance spec, or of a resize).  Fills @f. */
gboolean vn_flavor_parse(json_object *obj, const char *path, VnFlavor *f, GError **error);
void vn_flavor_copy(VnFlavor *to, const VnFlavor *from); /* @to: uninitialised */
void vn_flavor_clear(VnFlavor *f);

/* An image reference ("image" of an instance spec, or of a rebuild).  Fills @im. */
gboolean vn_image_ref_parse(json_object *obj, const char *path, VnImageRef *im, GError **error);
void vn_image_ref_clear(VnImageRef *im);
void vn_image_ref_copy(VnImageRef *to, const VnImageRef *from); /* @to: uninitialised */

/* The full record as JSON (result of get_instance, journal and database form). */
json_object *vn_instance_record_to_json(const VnInstanceRecord *rec);

/* The record as RPC replies and notifications show it: without user_data. */
json_object *vn_instance_record_to_reply(const VnInstanceRecord *rec);

/* Reads back what vn_instance_record_to_json wrote (validated as strictly as a request). */
VnInstanceRecord *vn_instance_record_from_json(json_object *obj, GError **error);

json_object *vn_flavor_to_json(const VnFlavor *f);
json_object *vn_image_ref_to_json(const VnImageRef *i);

/* @url with its secrets replaced by "***": the user information ("user:pass@") and every
 * query value ("?token=***&x=***"); the rest (scheme, host, path) stays, so the result
 * still says where the image comes from.  Caller frees. */
char *vn_url_redact(const char *url);

/* An http:// or https:// URL without white space. */
gboolean vn_url_acceptable(const char *url);

/* A copy of the arguments of a request of @method with every secret redacted: what the
 * journal keeps of a request (its replay never needs the secret: an interrupted build is
 * rolled back, not redone). */
json_object *vn_request_args_redacted(const char *method, json_object *args);
json_object *vn_string_map_to_json(GHashTable *map);
