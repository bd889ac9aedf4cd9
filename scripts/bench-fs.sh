#!/bin/sh
# File system cost of the two isolation modes, in one KVM test-host run. A
# measurement, not a test: it prints figures and ratios, and fails only when
# something could not be measured.
#
#   sh scripts/bench-fs.sh [MIB]     (on this machine, as root; MIB: size of
#                                     the sequential files, default 128)
#
# Rows, each running the same busybox workload on a directory of an ext4
# file system (the test host's scratch disk):
#   container -v    container mode, a bind mount of a host directory
#   vm -v           VM mode, the same directory shared with virtio-fs
#   vm virtio-blk   a capsa-vmm guest (busybox initramfs, no container) on a
#                   writable ext4 virtio-blk disk holding the same files
# Workload: sequential write (dd, fsync) and read of a file the host wrote
# (cold in the guest, warm in the host's cache), then a metadata job: untar
# 10,000 small files, stat them all, delete them.
#
# Then create time of a VM-mode container from an engine's bundle (`capsa
# create`, which boots the VM) with a 1 MiB and a 1 GiB root directory: the
# root is shared with virtio-fs, so the size should not matter. For the old
# way (an ext4 image of the root at every create) the dominant step,
# `mkfs.ext4 -d` of the 1 GiB root, is timed beside it.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
capsa=$here/target/release/capsa
if [ "${1:-}" != --inside ]; then
  [ -x "$capsa" ] || { echo "bench-fs: build capsa first (scripts/build.sh)" >&2; exit 1; }
  exec "$capsa" test-host --memory 8192 --scratch-disk 8192 --timeout 2400 -- sh "$0" --inside "${1:-128}"
fi
# The test host's ext4 scratch disk, not its tmpfs: shares behave there as
# on a host's disk (docs/isolation.md: tmpfs before Linux 6.6).
mib=$2 dir=/mnt/scratch/capsa-bench-fs
c="$capsa --root $dir/root"
rm -rf $dir; mkdir -p $dir && cd $dir || exit 1
kernel=$($capsa kernel path) || exit 1
vmm=$here/target/release/static/capsa-vmm
$c load --demo > /dev/null || exit 1

# The workload, for busybox sh: work.sh DIR prints one RESULT line.
cat > work.sh << 'EOF'
d=$1
t() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(t)" 'BEGIN {printf "%.2f", b - a}'; }
mib=$(($(stat -c %s "$d/big") / 1048576))
s=$(t); dd if=/dev/zero of="$d/w" bs=1M count="$mib" conv=fsync 2> /dev/null; w=$(since "$s")
s=$(t); dd if="$d/big" of=/dev/null bs=1M 2> /dev/null; r=$(since "$s")
mkdir "$d/tree"
s=$(t); tar -xf "$d/files.tar" -C "$d/tree"; x=$(since "$s")
s=$(t); find "$d/tree" -type f | xargs stat -c %s > /dev/null; st=$(since "$s")
s=$(t); rm -rf "$d/tree"; rm=$(since "$s")
n=$(tar -tf "$d/files.tar" | grep -c -v '/$')
rm -f "$d/w"
echo "RESULT $mib $w $r $x $st $rm $n"
EOF

# The data: a MIB-MiB file and a tar of 10,000 small files (100 dirs).
mkdir -p src/tree
dd if=/dev/urandom of=src/big bs=1M count="$mib" 2> /dev/null
i=0; while [ $i -lt 100 ]; do
  mkdir -p src/tree/d$i
  j=0; while [ $j -lt 100 ]; do echo "file $i $j" > src/tree/d$i/f$j; j=$((j+1)); done
  i=$((i+1))
done
tar -cf src/files.tar -C src/tree . && rm -rf src/tree
fresh() { rm -rf "$1"; mkdir -p "$1"; cp src/big src/files.tar "$1/"; }

: > results
row() { # label RESULT-line
  set -- "$1" $2
  [ "$2" = RESULT ] || { echo "bench-fs: $1 gave no result" >&2; exit 1; }
  awk -v l="$1" -v m="$3" -v w="$4" -v r="$5" -v x="$6" -v s="$7" -v d="$8" -v n="$9" 'BEGIN {
    printf "%-16s write %7.1f MB/s   read %7.1f MB/s   untar %5.2f s  stat %5.2f s  rm %5.2f s  (%d files: %5.2f s)\n",
      l, m / w, m / r, x, s, d, n, x + s + d
    printf "%s %.3f %.3f %.3f\n", l, m / w, m / r, x + s + d >> "results" }'
}

fresh vol1
row "container -v" "$($c run --rm -v $dir/vol1:/d -v $dir/work.sh:/work.sh:ro demo sh /work.sh /d | grep RESULT)"
fresh vol2
row "vm -v" "$($c run --rm --isolation vm -m 1g -v $dir/vol2:/d -v $dir/work.sh:/work.sh:ro demo sh /work.sh /d | grep RESULT)"

# virtio-blk: the same files on a writable ext4 disk, in a bare guest.
fresh blk
size=$((mib * 3 + 128))
mkfs.ext4 -q -F -d blk blk.ext4 "${size}M" > /dev/null || exit 1
mkdir -p initrd/bin initrd/dev initrd/proc initrd/sys initrd/d
cp /bin/busybox initrd/bin/ && ln -sf busybox initrd/bin/sh && cp work.sh initrd/
cat > initrd/init << 'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
mount -t ext4 /dev/vda /d && sh /work.sh /d
reboot -f
EOF
chmod +x initrd/init
(cd initrd && find . | cpio -o -H newc 2> /dev/null) > initrd.cpio
"$vmm" --kernel "$kernel" --initrd initrd.cpio --cmdline "console=ttyS0 reboot=k panic=-1 quiet" \
  --mem-mib 1024 --vcpus 1 --disk blk.ext4 --serial console-blk > /dev/null 2>&1
row "vm virtio-blk" "$(grep RESULT console-blk | tr -d '\r')"

echo
awk '{w[NR]=$(NF-2); r[NR]=$(NF-1); m[NR]=$NF}
  END {
    printf "virtio-fs / container bind mount: write %.2fx, read %.2fx, metadata job time %.2fx (goal: within 3x)\n", w[2]/w[1], r[2]/r[1], m[2]/m[1]
    printf "virtio-fs / virtio-blk:           write %.2fx, read %.2fx, metadata job time %.2fx\n", w[2]/w[3], r[2]/r[3], m[2]/m[3]
  }' results

# --- create time from an engine's bundle, small and large root ------------
layers=$(ls -d $dir/root/images/layers/*/ 2> /dev/null)
mk_bundle() { # dir extra-mib
  mkdir -p "$1/rootfs"
  for l in $layers; do cp -a "$l/." "$1/rootfs/"; done
  [ "$2" -gt 0 ] && dd if=/dev/urandom of="$1/rootfs/weights.bin" bs=1M count="$2" 2> /dev/null
  (cd "$1" && $capsa spec > /dev/null && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"sleep", "30"/' config.json)
  python3 - "$1/config.json" << 'PY'
import json, sys
p = sys.argv[1]; s = json.load(open(p))
s.setdefault("annotations", {})["io.capsa.isolation"] = "vm"
json.dump(s, open(p, "w"))
PY
}
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
create_row() { # label bundle
  s=$(ms); $capsa --root $dir/runc create --bundle "$2" "b-$1" > /dev/null 2> "create-$1.err" || { echo "bench-fs: create ($1) failed:" >&2; cat "create-$1.err" >&2; exit 1; }
  e=$(ms); $capsa --root $dir/runc delete --force "b-$1" > /dev/null 2>&1
  echo "$1 $((e - s))" >> creates
  printf '%-28s %6d ms\n' "create, root of $1" $((e - s))
}
[ -n "$layers" ] || { echo "bench-fs: no unpacked layers under $dir/root/images/layers" >&2; exit 1; }
mk_bundle small 0; mk_bundle large 1024
: > creates
create_row small small; create_row large large
s=$(ms); mkfs.ext4 -q -F -O ^has_journal -d large/rootfs old.ext4 1400M > /dev/null; e=$(ms); rm -f old.ext4
printf '%-28s %6d ms\n' "old way: mkfs.ext4 -d of 1 GiB" $((e - s))
awk '{t[NR]=$2} END {printf "create time, 1 GiB root / 1 MiB root: %.2fx (goal: independent of size)\n", t[2]/t[1]}' creates
