/* agent/ops/ops.h - the operations behind the RPC methods.  Each runs in a worker thread with
 * its instance to itself (see dispatcher.h), returns its result (NULL for a JSON null) or
 * fails with a GError whose message the controller reads. */
#pragma once

#include <json-c/json.h>

#include "agent/dispatcher.h"

/* Runs @op's method. */
gboolean vn_ops_run(VnOp *op, json_object **result, GError **error);

/* ping, answered in the AMQP thread. */
json_object *vn_ops_ping(VnAgent *a, const VnRequest *req);

/* build.c */
gboolean vn_op_build(VnOp *op, json_object **result, GError **error);
gboolean vn_op_evacuate(VnOp *op, json_object **result, GError **error);

/* rebuild.c */
gboolean vn_op_rebuild(VnOp *op, json_object **result, GError **error);

/* resize.c */
gboolean vn_op_resize(VnOp *op, json_object **result, GError **error);
gboolean vn_op_prep_resize(VnOp *op, json_object **result, GError **error);
gboolean vn_op_finish_resize(VnOp *op, json_object **result, GError **error);
gboolean vn_op_abort_resize_dest(VnOp *op, json_object **result, GError **error);
gboolean vn_op_confirm_resize(VnOp *op, json_object **result, GError **error);
gboolean vn_op_confirm_resize_source(VnOp *op, json_object **result, GError **error);
gboolean vn_op_revert_resize(VnOp *op, json_object **result, GError **error);
gboolean vn_op_finish_revert_resize(VnOp *op, json_object **result, GError **error);
/* A resized guest deleted before its resize was confirmed: the source's copy goes too. */
gboolean vn_resize_drop_source(VnAgent *a, const char *uuid, GError **error);

/* snapshot.c */
gboolean vn_op_snapshot(VnOp *op, json_object **result, GError **error);

/* ops_power.c */
gboolean vn_op_terminate(VnOp *op, json_object **result, GError **error);
gboolean vn_op_start(VnOp *op, json_object **result, GError **error);
gboolean vn_op_stop(VnOp *op, json_object **result, GError **error);
gboolean vn_op_reboot(VnOp *op, json_object **result, GError **error);
gboolean vn_op_pause(VnOp *op, json_object **result, GError **error);
gboolean vn_op_unpause(VnOp *op, json_object **result, GError **error);
gboolean vn_op_suspend(VnOp *op, json_object **result, GError **error);
gboolean vn_op_resume(VnOp *op, json_object **result, GError **error);

/* ops_query.c */
gboolean vn_op_get_instance(VnOp *op, json_object **result, GError **error);
gboolean vn_op_list_instances(VnOp *op, json_object **result, GError **error);
gboolean vn_op_console_output(VnOp *op, json_object **result, GError **error);
gboolean vn_op_host_info(VnOp *op, json_object **result, GError **error);

/* ops_migrate.c */
gboolean vn_op_live_migration(VnOp *op, json_object **result, GError **error);
gboolean vn_op_check_dest(VnOp *op, json_object **result, GError **error);
gboolean vn_op_check_source(VnOp *op, json_object **result, GError **error);
gboolean vn_op_pre_live_migration(VnOp *op, json_object **result, GError **error);
gboolean vn_op_post_live_migration_dest(VnOp *op, json_object **result, GError **error);
gboolean vn_op_rollback_dest(VnOp *op, json_object **result, GError **error);
gboolean vn_op_migration_abort(VnOp *op, json_object **result, GError **error);
gboolean vn_op_migration_force_complete(VnOp *op, json_object **result, GError **error);
gboolean vn_op_get_migration(VnOp *op, json_object **result, GError **error);

/* interfaces.c */
gboolean vn_op_attach_interface(VnOp *op, json_object **result, GError **error);
gboolean vn_op_detach_interface(VnOp *op, json_object **result, GError **error);
gboolean vn_op_update_port_security(VnOp *op, json_object **result, GError **error);

/* host.c */
gboolean vn_op_set_host_enabled(VnOp *op, json_object **result, GError **error);
gboolean vn_op_host_maintenance_mode(VnOp *op, json_object **result, GError **error);

/* volumes.c */
gboolean vn_op_attach_volume(VnOp *op, json_object **result, GError **error);
gboolean vn_op_detach_volume(VnOp *op, json_object **result, GError **error);
