"""The RPC method table: each method's parameter schema and handler."""

import errno as E
import os

from .wire import *  # noqa: F401,F403
from .objects import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .instance import *  # noqa: F401,F403


# ------------------------------------------------------------------------------------------
# The method table: the exact keys each method accepts (SPDK v26.05 schema.json and the
# handlers' decoders), and what a decode failure answers, which differs per method.

class Method:
    def __init__(self, schema=None, optional=False, decode_error=DECODE_FAILED, no_params=None,
                 raw=False):
        self.schema = schema
        self.optional = optional          # params may be absent (`if (params && ...)`)
        self.decode_error = decode_error
        self.no_params = no_params        # (code, message) when params are given
        self.raw = raw                    # the handler also reads undecoded keys


def serial_number(v):
    if not isinstance(v, str) or not printable(v, 20):
        raise DecodeError()
    return v


def model_number(v):
    if not isinstance(v, str) or not printable(v, 40):
        raise DecodeError()
    return v


STR = "string"
NAME_ONLY = Obj({"name": Req(STR)})
LISTEN_ADDRESS = Obj({"trtype": Req(STR), "adrfam": Opt(STR), "traddr": Req(STR),
                      "trsvcid": Opt(STR)})
NVMF_NAMESPACE = Obj({"nsid": Opt("u32"), "bdev_name": Req(STR), "ptpl_file": Opt(STR),
                      "nguid": Opt(hex_bytes(16)), "eui64": Opt(hex_bytes(8)), "uuid": Opt("uuid"),
                      "anagrpid": Opt("u32"), "no_auto_visible": Opt("bool"),
                      "hide_metadata": Opt("bool")})
SUBSYSTEM_QUERY = Obj({"nqn": Req(STR), "tgt_name": Opt(STR)})
PREFERRED = ("preferred_write_granularity", "preferred_write_alignment", "optimal_write_size",
             "preferred_unmap_granularity", "preferred_unmap_alignment")

METHODS = {
    "spdk_get_version": Method(no_params=(INVALID_PARAMS,
                                          "spdk_get_version method requires no parameters")),
    "rpc_get_methods": Method(Obj({"current": Opt("bool"), "include_aliases": Opt("bool")}),
                              optional=True, decode_error=DECODE_INVALID_PARAMS),
    "spdk_kill_instance": Method(Obj({"sig_name": Req(Enum(
        "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1"))}),
                                 decode_error=DECODE_INVALID_PARAMS),
    "bdev_wait_for_examine": Method(no_params=(INVALID_PARAMS,
                                               "bdev_wait_for_examine requires no parameters")),
    "notify_get_types": Method(no_params=(INVALID_PARAMS, "No parameters required")),
    "notify_get_notifications": Method(Obj({"id": Opt("u64"), "max": Opt("u64")}), optional=True,
                                       decode_error=DECODE_EINVAL),
    "bdev_get_bdevs": Method(Obj({"name": Opt(STR), "timeout": Opt("u64")}), optional=True),
    "bdev_set_qos_limit": Method(Obj({
        "name": Req(STR), "rw_ios_per_sec": Opt("u64"), "rw_mbytes_per_sec": Opt("u64"),
        "r_mbytes_per_sec": Opt("u64"), "w_mbytes_per_sec": Opt("u64")})),
    "bdev_get_iostat": Method(Obj({"names": Opt(Arr(STR, 1024)), "per_channel": Opt("bool"),
                                   "reset_mode": Opt(Enum("all", "maxmin", "error", "none"))}),
                              optional=True),
    "bdev_malloc_create": Method(Obj({
        "name": Opt(STR), "block_size": Req("u32"), "num_blocks": Req("u64"), "uuid": Opt("uuid"),
        "optimal_io_boundary": Opt("u32"), "md_size": Opt("u32"), "md_interleave": Opt("bool"),
        "dif_type": Opt("i32"), "dif_is_head_of_md": Opt("bool"), "physical_block_size": Opt("u32"),
        "dif_pi_format": Opt("u32"), "numa_id": Opt("i32")})),
    "bdev_malloc_delete": Method(NAME_ONLY),
    "bdev_null_create": Method(Obj(dict({
        "name": Req(STR), "block_size": Req("u32"), "num_blocks": Req("u64"), "uuid": Opt("uuid"),
        "physical_block_size": Opt("u32"), "md_size": Opt("u32"), "dif_type": Opt("i32"),
        "dif_pi_format": Opt("u32"), "dif_is_head_of_md": Opt("bool")},
        **{k: Opt("u32") for k in PREFERRED}))),
    "bdev_null_delete": Method(NAME_ONLY),
    "bdev_null_resize": Method(Obj({"name": Req(STR), "new_size": Req("u64")})),
    "bdev_aio_create": Method(Obj({
        "name": Req(STR), "filename": Req(STR), "block_size": Opt("u32"), "readonly": Opt("bool"),
        "fallocate": Opt("bool"), "uuid": Opt("uuid"), "nowait": Opt("bool")})),
    "bdev_aio_delete": Method(NAME_ONLY),
    "bdev_aio_rescan": Method(NAME_ONLY),
    "bdev_lvol_create_lvstore": Method(Obj({
        "bdev_name": Req(STR), "lvs_name": Req(STR), "cluster_sz": Opt("u32"),
        "clear_method": Opt(STR), "num_md_pages_per_cluster_ratio": Opt("u32"),
        "md_page_size": Opt("u32")})),
    "bdev_lvol_create": Method(Obj({
        "lvol_name": Req(STR), "size_in_mib": Req("u64"), "thin_provision": Opt("bool"),
        "uuid": Opt(STR), "lvs_name": Opt(STR), "clear_method": Opt(STR)})),
    "bdev_lvol_resize": Method(Obj({"name": Req(STR), "size_in_mib": Req("u64")})),
    "bdev_nvme_attach_controller": Method(Obj({
        "name": Req(STR), "trtype": Req(STR), "traddr": Req(STR), "adrfam": Opt(STR),
        "trsvcid": Opt(STR), "priority": Opt(STR), "subnqn": Opt(STR), "hostnqn": Opt(STR),
        "hostaddr": Opt(STR), "hostsvcid": Opt(STR), "prchk_reftag": Opt("bool"),
        "prchk_guard": Opt("bool"), "hdgst": Opt("bool"), "ddgst": Opt("bool"),
        "fabrics_connect_timeout_us": Opt("u64"),
        "multipath": Opt(Enum("failover", "multipath", "disable")),
        "num_io_queues": Opt("u32"), "ctrlr_loss_timeout_sec": Opt("i32"),
        "reconnect_delay_sec": Opt("u32"), "fast_io_fail_timeout_sec": Opt("u32"),
        "psk": Opt(STR), "max_bdevs": Opt("u32"), "dhchap_key": Opt(STR),
        "dhchap_ctrlr_key": Opt(STR), "allow_unrecognized_csi": Opt("bool"),
        "multipath_opts": Opt(Obj({"policy": Opt(Enum("active_passive", "active_active")),
                                   "selector": Opt(Enum("round_robin", "queue_depth")),
                                   "min_io": Opt("u32")}))})),
    "bdev_nvme_detach_controller": Method(Obj({
        "name": Req(STR), "trtype": Opt(STR), "traddr": Opt(STR), "adrfam": Opt(STR),
        "trsvcid": Opt(STR), "subnqn": Opt(STR), "hostaddr": Opt(STR), "hostsvcid": Opt(STR)})),
    "bdev_nvme_get_controllers": Method(Obj({"name": Opt(STR)}), optional=True),
    "bdev_iscsi_create": Method(Obj({"name": Req(STR), "initiator_iqn": Req(STR),
                                     "url": Req(STR)})),
    "bdev_iscsi_delete": Method(NAME_ONLY),
    "bdev_rbd_register_cluster": Method(Obj({
        "name": Req(STR), "user_id": Opt(STR), "config_param": Opt(rbd_config),
        "config_file": Opt(STR), "key_file": Opt(STR), "core_mask": Opt(STR)})),
    "bdev_rbd_unregister_cluster": Method(NAME_ONLY),
    "bdev_rbd_get_clusters_info": Method(Obj({"name": Opt(STR)}), optional=True),
    "bdev_rbd_create": Method(Obj({
        "name": Opt(STR), "user_id": Opt(STR), "pool_name": Req(STR), "rbd_name": Req(STR),
        "block_size": Req("u32"), "config": Opt(rbd_config), "cluster_name": Opt(STR),
        "uuid": Opt("uuid"), "read_only": Opt("bool")})),
    "bdev_rbd_delete": Method(NAME_ONLY),
    "bdev_rbd_resize": Method(Obj({"name": Req(STR), "new_size": Req("u64")})),
    "nvmf_create_transport": Method(Obj({
        "trtype": Req(STR), "tgt_name": Opt(STR), "max_queue_depth": Opt("u16"),
        "max_io_qpairs_per_ctrlr": Opt("u16"), "in_capsule_data_size": Opt("u32"),
        "max_io_size": Opt("u32"), "io_unit_size": Opt("u32"), "max_aq_depth": Opt("u32"),
        "num_shared_buffers": Opt("u32"), "buf_cache_size": Opt("u32"),
        "iobuf_small_cache_size": Opt("u32"), "iobuf_large_cache_size": Opt("u32"),
        "dif_insert_or_strip": Opt("bool"), "abort_timeout_sec": Opt("u32"), "zcopy": Opt("bool"),
        "acceptor_poll_rate": Opt("u32"), "ack_timeout": Opt("u32"),
        "data_wr_pool_size": Opt("u32"), "disable_command_passthru": Opt("bool"),
        "kas": Opt("u16"), "min_kato": Opt("u32"), "masked_oncs": Opt(Arr(STR, 16)),
        "masked_fuses": Opt(Arr(STR, 16))}, relaxed=True),
        decode_error=DECODE_INVALID_PARAMS, raw=True),
    "nvmf_get_transports": Method(Obj({"trtype": Opt(STR), "tgt_name": Opt(STR)}), optional=True,
                                  decode_error=DECODE_INVALID_PARAMS),
    "nvmf_create_subsystem": Method(Obj({
        "nqn": Req(STR), "tgt_name": Opt(STR), "serial_number": Opt(serial_number),
        "model_number": Opt(model_number), "max_namespaces": Opt("u32"),
        "allow_any_host": Opt("bool"), "ana_reporting": Opt("bool"), "min_cntlid": Opt("u16"),
        "max_cntlid": Opt("u16"), "max_discard_size_kib": Opt("u64"),
        "max_write_zeroes_size_kib": Opt("u64"), "dmrsl": Opt("u32"), "wzsl": Opt("u8"),
        "passthrough": Opt("bool"), "enable_nssr": Opt("bool")}),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_delete_subsystem": Method(SUBSYSTEM_QUERY, decode_error=DECODE_INVALID_PARAMS),
    "nvmf_get_subsystems": Method(Obj({"nqn": Opt(STR), "tgt_name": Opt(STR)}), optional=True,
                                  decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_add_listener": Method(Obj({
        "nqn": Req(STR), "listen_address": Req(LISTEN_ADDRESS), "tgt_name": Opt(STR),
        "secure_channel": Opt("bool"),
        "ana_state": Opt(Enum("optimized", "non_optimized", "inaccessible")),
        "sock_impl": Opt(STR)}, relaxed=True), decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_remove_listener": Method(Obj({
        "nqn": Req(STR), "listen_address": Req(LISTEN_ADDRESS), "tgt_name": Opt(STR)}),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_add_ns": Method(Obj({
        "nqn": Req(STR), "namespace": Req(NVMF_NAMESPACE), "tgt_name": Opt(STR)}, relaxed=True),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_remove_ns": Method(Obj({"nqn": Req(STR), "nsid": Req("u32"),
                                            "tgt_name": Opt(STR)}),
                                       decode_error=DECODE_INVALID_PARAMS),
    # psk is left out on purpose: add_host decodes relaxed and only the TCP transport
    # reads psk, from the raw params (see the handler).
    "nvmf_subsystem_add_host": Method(Obj({
        "nqn": Req(STR), "host": Req(STR), "tgt_name": Opt(STR), "dhchap_key": Opt(STR),
        "dhchap_ctrlr_key": Opt(STR)}, relaxed=True),
        decode_error=DECODE_INVALID_PARAMS, raw=True),
    "nvmf_subsystem_remove_host": Method(Obj({
        "nqn": Req(STR), "host": Req(STR), "tgt_name": Opt(STR), "timeout_ms": Opt("u64")}),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_get_controllers": Method(SUBSYSTEM_QUERY,
                                             decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_get_qpairs": Method(SUBSYSTEM_QUERY, decode_error=DECODE_INVALID_PARAMS),
    "vhost_create_blk_controller": Method(Obj({
        "ctrlr": Req(STR), "dev_name": Req(STR), "cpumask": Opt(cpumask), "transport": Opt(STR),
        "readonly": Opt("bool"), "packed_ring": Opt("bool")}, relaxed=True),
        decode_error=DECODE_EINVAL),
    "vhost_delete_controller": Method(Obj({"ctrlr": Req(STR)}), decode_error=DECODE_EINVAL),
    "vhost_get_controllers": Method(Obj({"name": Opt(STR)}), optional=True,
                                    decode_error=(INTERNAL_ERROR, os.strerror(E.EINVAL))),
    "vfu_tgt_set_base_path": Method(Obj({"path": Req(STR)}), decode_error=DECODE_EINVAL),
    "vfu_virtio_create_blk_endpoint": Method(Obj({
        "name": Req(STR), "bdev_name": Req(STR), "cpumask": Opt(STR), "num_queues": Opt("u16"),
        "qsize": Opt("u16"), "packed_ring": Opt("bool")}), decode_error=DECODE_EINVAL),
    "vfu_virtio_delete_endpoint": Method(NAME_ONLY, decode_error=DECODE_EINVAL),
    "iscsi_create_portal_group": Method(Obj({
        "tag": Req("i32"), "portals": Req(Arr(Obj({"host": Req(STR), "port": Req(STR)}), 1024)),
        "private": Opt("bool"), "wait": Opt("bool")}), decode_error=DECODE_INVALID_PARAMS),
    "iscsi_create_initiator_group": Method(Obj({
        "tag": Req("i32"), "initiators": Req(Arr(STR, 256)), "netmasks": Req(Arr(STR, 256))}),
        decode_error=DECODE_INVALID_PARAMS),
    "iscsi_create_target_node": Method(Obj({
        "name": Req(STR), "alias_name": Req(STR),
        "pg_ig_maps": Req(Arr(Obj({"ig_tag": Req("i32"), "pg_tag": Req("i32")}), 256)),
        "luns": Req(Arr(Obj({"lun_id": Opt("i32"), "bdev_name": Opt(STR)}), 64)),
        "queue_depth": Req("i32"), "disable_chap": Opt("bool"), "require_chap": Opt("bool"),
        "mutual_chap": Opt("bool"), "chap_group": Opt("i32"), "header_digest": Opt("bool"),
        "data_digest": Opt("bool")}), decode_error=DECODE_INVALID_PARAMS),
    "iscsi_create_auth_group": Method(Obj({
        "tag": Req("i32"),
        "secrets": Opt(Arr(Obj({"user": Req(STR), "secret": Req(STR), "muser": Opt(STR),
                                "msecret": Opt(STR)}), 64))}),
        decode_error=DECODE_INVALID_PARAMS),
}


def invoke(inst, method, params):
    """Look the method up, decode its params as SPDK does, run the handler."""
    spec = METHODS.get(method)
    if spec is None:
        raise RpcError(-32601, "Method not found")                        # 04 id 29
    handler = getattr(inst, "rpc_" + method)
    if spec.no_params is not None:
        if params is not None:
            raise RpcError(*spec.no_params)                                # 04 id 35
        return handler(None)
    if params is None:
        if not spec.optional:
            raise RpcError(*spec.decode_error)
        return handler(None)
    try:
        p = decode_object(spec.schema, params)                             # 04 id 30-32, 34
    except DecodeError:
        raise RpcError(*spec.decode_error)
    if p.get("tgt_name", "nvmf_tgt") != "nvmf_tgt" and method.startswith("nvmf_"):
        raise RpcError(INTERNAL_ERROR, "Unable to find a target.")
    return handler(p, params) if spec.raw else handler(p)
