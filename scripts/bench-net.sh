#!/bin/sh
# Network cost of the two isolation modes, and of capsa-vmm's virtio-net
# against qemu's (tap, no vhost), in one KVM test-host run. A measurement,
# not a test: it prints figures and ratios, and fails only when something
# could not be measured.
#
#   sh scripts/bench-net.sh [SECONDS]     (on this machine, as root)
#
# Rows:
#   container / vm   a server in a `capsa run -p` container, reached from
#                    the host through the published port (iperf3 TCP both
#                    ways; HTTP request latency, curl, one new connection
#                    per request: busybox httpd, which forks per
#                    connection, and bench-hiserve.c, one process that
#                    answers them all, as a model server does)
#   capsa-vmm / qemu the same guest kernel and initramfs (busybox, iperf3,
#                    httpd) on a tap in the host's namespace, no container;
#                    qemu twice: its defaults (checksum and TSO offloads on)
#                    and with every offload off
# Traffic stays inside the test host: its loopback, the taps and the
# container networks this script makes.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
capsa=$here/target/release/capsa
if [ "${1:-}" != --inside ]; then
  command -v iperf3 > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 > /dev/null || exit 1
  [ -x "$capsa" ] || { echo "bench-net: build capsa first (scripts/build.sh)" >&2; exit 1; }
  gcc -static -O2 -o "$here/target/bench-hiserve" "$here/scripts/bench-hiserve.c" || exit 1
  exec "$capsa" test-host --timeout 1500 -- sh "$0" --inside "${1:-5}"
fi
secs=$2 dir=/run/capsa-bench-net
c="$capsa --root $dir/root"
mkdir -p $dir && cd $dir || exit 1
kernel=$($capsa kernel path) || exit 1
vmm=$here/target/release/static/capsa-vmm

# iperf3 with its libraries, run through their loader: a directory that
# works as a volume in a busybox container and in an initramfs.
mkdir -p iperf/lib
cp /usr/bin/iperf3 iperf/
for l in $(ldd /usr/bin/iperf3 | grep -o '/[^ ]*'); do cp -L "$l" iperf/lib/; done
ln -sf lib/ld-linux-x86-64.so.2 iperf/ld.so
cp "$here/target/bench-hiserve" iperf/hiserve
iperf_srv="/opt/iperf/ld.so --library-path /opt/iperf/lib /opt/iperf/iperf3 -s"

ms_of() { awk '{print $1 * 1000}'; }
# iperf3 client for SECS seconds; prints Gbit/s (received).
throughput() { # host port [-R]
  iperf3 -c "$1" -p "$2" -t "$secs" -f g ${3:-} > iperf.out 2>&1 || { echo "bench-net: iperf3 -c $* failed:" >&2; tail -3 iperf.out >&2; }
  awk '/receiver/ {print $(NF-2)}' iperf.out
}
wait_up() { # host iperf-port http-port: until the three servers answer
  i=0; while [ $i -lt 240 ]; do
    curl -sf --max-time 1 "http://$1:$3/" > /dev/null && curl -sf --max-time 1 "http://$1:$(($3 + 1))/" > /dev/null &&
      iperf3 -c "$1" -p "$2" -t 1 > /dev/null 2>&1 && return 0
    i=$((i+1)); sleep 0.25; done; return 1
}
# 300 requests, each on a new connection; prints the median and p90 in ms.
latency() { # url
  urls=$(for _ in $(seq 300); do printf '%s ' "$1"; done)
  # shellcheck disable=SC2086
  curl -s -w '\nT %{time_total}\n' $urls | sed -n 's/^T //p' | ms_of | sort -n |
    awk '{v[NR]=$1} END {printf "%.2f %.2f", v[int(NR/2)+1], v[int(NR*0.9)]}'
}
row() { # label host iperf-port http-port (httpd; bench-hiserve on the next port)
  up=$(throughput "$2" "$3"); down=$(throughput "$2" "$3" -R)
  lat=$(latency "http://$2:$4/"); one=$(latency "http://$2:$(($4 + 1))/")
  printf '%-22s host->guest %6s Gbit/s   guest->host %6s Gbit/s   request median/p90 %s ms (httpd), %s ms (one process)\n' \
    "$1" "${up:-?}" "${down:-?}" "$lat" "$one"
  echo "$1 ${up:-0} ${down:-0} $lat $one" >> results
}
: > results

# --- the two isolation modes, through published ports ---
$c load --demo > /dev/null || exit 1
for mode in container vm; do
  $c run -d --isolation $mode --name "srv-$mode" -p 5201:5201 -p 8080:80 -p 8081:81 -v $dir/iperf:/opt/iperf:ro demo \
    sh -c "mkdir -p /srv /tmp && echo hi > /srv/index.html && httpd -p 80 -h /srv && { /opt/iperf/hiserve 81 & } && exec $iperf_srv" > /dev/null || exit 1
  wait_up 127.0.0.1 5201 8080 || { echo "bench-net: the $mode servers never answered" >&2; exit 1; }
  row "$mode mode (-p)" 127.0.0.1 5201 8080
  $c rm -f "srv-$mode" > /dev/null
done

# --- capsa-vmm against qemu: one guest, on a tap in this namespace ---
mkdir -p initrd/bin initrd/dev initrd/proc initrd/sys initrd/tmp initrd/srv initrd/opt
cp /bin/busybox initrd/bin/ && ln -sf busybox initrd/bin/sh
cp -a iperf initrd/opt/
echo hi > initrd/srv/index.html
cat > initrd/init << EOF
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
ip link set lo up; ip addr add 10.77.0.2/24 dev eth0; ip link set eth0 up
httpd -p 80 -h /srv
/opt/iperf/hiserve 81 &
$iperf_srv
EOF
chmod +x initrd/init
(cd initrd && find . | cpio -o -H newc 2> /dev/null) > initrd.cpio
mac=02:00:0a:4d:00:02
host_side="ip addr add 10.77.0.1/24 dev tbench && ip link set tbench up"
guest_row() { # label console-name pid
  wait_up 10.77.0.2 5201 80 || { echo "bench-net: the $1 guest never answered" >&2; tail -5 console-"$2" >&2; exit 1; }
  row "$1" 10.77.0.2 5201 80
  kill -0 "$3" 2> /dev/null || { echo "bench-net: the $1 guest died:" >&2; tail -15 console-"$2" >&2; exit 1; }
}

# capsa-vmm takes a tap descriptor: this opens one as capsa's monitor does
# (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte header) and execs the VMM.
cat > tap-exec.py << 'EOF'
import fcntl, os, struct, subprocess, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tbench", 0x0002 | 0x1000 | 0x4000))  # TUNSETIFF
fcntl.ioctl(fd, 0x400454D8, struct.pack("i", 12))  # TUNSETVNETHDRSZ
subprocess.run(["sh", "-c", sys.argv[1]], check=True)
if fd != 3:
    os.dup2(fd, 3)
os.set_inheritable(3, True)
os.execv(sys.argv[2], sys.argv[2:])
EOF
/usr/bin/python3 tap-exec.py "$host_side" "$vmm" --kernel "$kernel" --initrd initrd.cpio \
  --cmdline "console=ttyS0 reboot=k panic=-1 quiet" --mem-mib 512 --vcpus 1 \
  --net "tap-fd=3,mac=$mac" --serial console-capsa-vmm > /dev/null 2>&1 &
pid=$!
guest_row capsa-vmm capsa-vmm $pid
kill $pid; wait $pid 2> /dev/null

qemu_row() { # label virtio-net-device-options
  qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu host -m 512M -smp 1 -nodefaults -no-user-config \
    -display none -no-reboot -serial file:console-qemu -kernel "$kernel" -initrd initrd.cpio \
    -append "console=ttyS0 reboot=t panic=-1 quiet" \
    -netdev tap,id=n0,ifname=tbench,script=no,downscript=no,vhost=off \
    -device "virtio-net-device,netdev=n0,mac=$mac$2" > /dev/null 2>&1 &
  pid=$!
  i=0; while ! ip link show tbench > /dev/null 2>&1 && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
  sh -c "$host_side"
  guest_row "$1" qemu $pid
  kill $pid; wait $pid 2> /dev/null
}
qemu_row "qemu (offloads on)" ""
qemu_row "qemu (offloads off)" ",csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ufo=off,mrg_rxbuf=off"

echo
awk '{up[NR]=$(NF-5); down[NR]=$(NF-4); med[NR]=$(NF-3); one[NR]=$(NF-1)}
  END {
    printf "vm/container: host->guest %.2fx, guest->host %.2fx, request median %.2fx (httpd), %.2fx (one process)\n", up[2]/up[1], down[2]/down[1], med[2]/med[1], one[2]/one[1]
    printf "capsa-vmm on a bare tap/container: request median %.2fx (httpd), %.2fx (one process)\n", med[3]/med[1], one[3]/one[1]
    printf "capsa-vmm/qemu (offloads on): host->guest %.2fx, guest->host %.2fx, request median %.2fx (httpd), %.2fx (one process)\n", up[3]/up[4], down[3]/down[4], med[3]/med[4], one[3]/one[4]
    printf "capsa-vmm/qemu (offloads off): host->guest %.2fx, guest->host %.2fx, request median %.2fx\n", up[3]/up[5], down[3]/down[5], med[3]/med[5]
  }' results
