"""Struct layouts of the declarations in `_cdef`, as the C compiler laid them out.

Recorded from an API-mode build against the libucp 1.22 headers on Linux x86_64 (LP64; aarch64
lays these types out identically) with ``python -m rdma.ucx.build --print-layout``. ABI mode
refuses to load if cffi computes anything else, and a unit test compares this table with a fresh
compiled build, so an edit to `_cdef` without re-recording is caught.
"""

from __future__ import annotations

from typing import Any

LAYOUT: dict[str, dict[str, Any]] = {
    "struct sockaddr_storage": {"align": 8, "fields": {}, "size": 128},
    "ucp_conn_request_attr_t": {
        "align": 8,
        "fields": {"client_address": 8, "client_id": 136, "field_mask": 0},
        "size": 144,
    },
    "ucp_context_attr_t": {
        "align": 8,
        "fields": {
            "device_counter_size": 64,
            "field_mask": 0,
            "memory_types": 24,
            "name": 32,
            "request_size": 8,
            "thread_mode": 16,
        },
        "size": 72,
    },
    "ucp_ep_attr_t": {
        "align": 8,
        "fields": {
            "field_mask": 0,
            "local_sockaddr": 40,
            "name": 8,
            "remote_sockaddr": 168,
            "transports": 296,
            "user_data": 320,
        },
        "size": 328,
    },
    "ucp_ep_params_t": {
        "align": 8,
        "fields": {
            "address": 8,
            "conn_request": 72,
            "err_handler": 24,
            "err_mode": 16,
            "field_mask": 0,
            "flags": 48,
            "local_sockaddr": 88,
            "name": 80,
            "sockaddr": 56,
            "user_data": 40,
        },
        "size": 104,
    },
    "ucp_listener_attr_t": {"align": 8, "fields": {"field_mask": 0, "sockaddr": 8}, "size": 136},
    "ucp_listener_params_t": {
        "align": 8,
        "fields": {"accept_handler": 24, "conn_handler": 40, "field_mask": 0, "sockaddr": 8},
        "size": 56,
    },
    "ucp_mem_map_params_t": {
        "align": 8,
        "fields": {
            "address": 8,
            "exported_memh_buffer": 40,
            "field_mask": 0,
            "flags": 24,
            "length": 16,
            "memory_type": 32,
            "prot": 28,
        },
        "size": 48,
    },
    "ucp_params_t": {
        "align": 8,
        "fields": {
            "estimated_num_eps": 56,
            "estimated_num_ppn": 64,
            "features": 8,
            "field_mask": 0,
            "mt_workers_shared": 48,
            "name": 72,
            "node_local_id": 80,
            "request_cleanup": 32,
            "request_init": 24,
            "request_size": 16,
            "tag_sender_mask": 40,
        },
        "size": 88,
    },
    "ucp_request_param_t": {
        "align": 8,
        "fields": {
            "cb": 16,
            "datatype": 24,
            "flags": 4,
            "memh": 64,
            "memory_type": 48,
            "op_attr_mask": 0,
            "recv_info": 56,
            "remote": 80,
            "remote_count": 88,
            "remote_datatype": 72,
            "reply_buffer": 40,
            "request": 8,
            "user_data": 32,
        },
        "size": 96,
    },
    "ucp_transport_entry_t": {
        "align": 8,
        "fields": {"device_name": 8, "transport_name": 0},
        "size": 16,
    },
    "ucp_transports_t": {
        "align": 8,
        "fields": {"entries": 0, "entry_size": 16, "num_entries": 8},
        "size": 24,
    },
    "ucp_worker_attr_t": {
        "align": 8,
        "fields": {
            "address": 16,
            "address_flags": 12,
            "address_length": 24,
            "field_mask": 0,
            "max_am_header": 32,
            "max_debug_string": 72,
            "name": 40,
            "thread_mode": 8,
        },
        "size": 80,
    },
    "ucp_worker_params_t": {
        "align": 8,
        "fields": {
            "am_alignment": 184,
            "client_id": 192,
            "cpu_mask": 16,
            "event_fd": 160,
            "events": 144,
            "field_mask": 0,
            "flags": 168,
            "name": 176,
            "thread_mode": 8,
            "user_data": 152,
        },
        "size": 200,
    },
    "ucs_sock_addr_t": {"align": 8, "fields": {"addr": 0, "addrlen": 8}, "size": 16},
    "ucs_status_t": {"align": 1, "fields": {}, "size": 1},
}
