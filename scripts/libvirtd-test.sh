# Sourced by the benchmarks: libvirtd 9.0 serving only its built-in test driver (no
# connection-driver modules are loaded), as ../shared/PEERS.md §1 runs it, on a unix socket
# in DIR. start_libvirtd_test DIR [libvirtd.conf lines] [-- libvirtd args]: starts it in the
# background, sets LV_PID and LV_SOCK, and waits for its socket.
start_libvirtd_test() {
  local dir=$1; shift
  local extra=() args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do extra+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift && args=("$@")
  mkdir -p "$dir/nodrivers"
  {
    echo 'listen_tcp = 0'
    printf '%s\n' "${extra[@]}"
    cat <<CONF
unix_sock_dir = "$dir"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:$dir/libvirtd.log"
CONF
  } >"$dir/libvirtd.conf"
  LIBVIRT_DRIVER_DIR=$dir/nodrivers libvirtd "${args[@]}" -f "$dir/libvirtd.conf" >"$dir/stdout.log" 2>&1 &
  LV_PID=$!
  LV_SOCK=$dir/libvirt-sock
  for _ in $(seq 200); do [ -S "$LV_SOCK" ] && break; sleep 0.05; done
}
