#!/bin/sh
# ipmi_sim's chassis_control program: keeps power and boot device in files under $1.
# ipmi_sim runs `prog DIR get power|boot` and `prog DIR set power 0|1 reset 1 boot pxe ...`.
d=$1; op=$2; shift 2
[ -f "$d/power" ] || echo 0 > "$d/power"
[ -f "$d/boot" ] || echo default > "$d/boot"
case $op in
  get) for p in "$@"; do case $p in
         power) echo "power:$(cat "$d/power")";;
         boot) echo "boot:$(cat "$d/boot")";;
         *) echo "Invalid parameter: $p"; exit 1;;
       esac; done;;
  set) while [ $# -gt 1 ]; do p=$1; v=$2; shift 2; case $p in
         power) echo "$v" > "$d/power";;
         reset) :;;
         shutdown) echo 0 > "$d/power";;
         boot) echo "$v" > "$d/boot";;
         identify) [ $# -gt 0 ] && shift;;
         *) echo "Invalid parameter: $p"; exit 1;;
       esac; done;;
  *) exit 1;;
esac
