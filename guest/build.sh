#!/bin/bash
# Build the lab's QEMU guest from Debian packages alone, into OUT (default build/guest):
#   OUT/vmlinuz      the kernel of linux-image-<version>-cloud-amd64 (apt-get download + dpkg-deb -x; never
#                    installed: the host's /boot and /lib/modules are not touched)
#   OUT/initrd.img   busybox-static, virtio-net/virtio-pci/8021q and their dependencies, rnguest (static,
#                    gcc), guest/init
#   OUT/VERSION      the kernel version
# Idempotent: the kernel package is fetched once (OUT/kernel/); the initramfs is rebuilt by make when
# guest/init, guest/rnguest.c or this script changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-build/guest}")
mkdir -p "$out"
say() { printf 'roamnet guest: %s\n' "$*"; }

# --- the kernel: the cloud flavour's current version, fetched once --------------------------------
if [ ! -s "$out/VERSION" ] || [ ! -s "$out/kernel/lib/modules/$(cat "$out/VERSION")/modules.dep" ]; then
  candidate() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
  pkg=$(candidate)
  if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then  # a machine whose package lists were never fetched
    apt-get update -q >/dev/null
    pkg=$(candidate)
  fi
  [ -n "$pkg" ] || { say "apt-cache knows no linux-image-cloud-amd64 (run apt-get update as root)"; exit 1; }
  say "fetching $pkg (apt-get download; unpacked under $out/kernel, not installed)"
  rm -rf "$out/deb" "$out/kernel"
  mkdir -p "$out/deb"
  (cd "$out/deb" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >/dev/null)
  dpkg-deb -x "$out"/deb/*.deb "$out/kernel"
  version=${pkg#linux-image-}
  [ -d "$out/kernel/lib/modules/$version" ] || { say "$pkg has no /lib/modules/$version"; exit 1; }
  # the package ships no modules.dep (depmod writes it at install): made here, inside the unpacked tree
  depmod -b "$out/kernel" "$version"
  echo "$version" > "$out/VERSION"
  rm -rf "$out/deb"
fi
version=$(cat "$out/VERSION")
cp "$out/kernel/boot/vmlinuz-$version" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"

# --- the initramfs -------------------------------------------------------------------------------
moddir="$out/kernel/lib/modules/$version"
root="$out/root"
rm -rf "$root"
mkdir -p "$root"/{bin,lib/modules,proc,sys,dev,tmp}
cp /bin/busybox "$root/bin/busybox"
file -b "$root/bin/busybox" 2>/dev/null | grep -q "statically linked" || [ ! -x /usr/bin/file ] \
  || { say "/bin/busybox is not static (install busybox-static)"; exit 1; }
gcc -static -O2 -Wall -o "$root/bin/rnguest" "$here/rnguest.c"
install -m 0755 "$here/init" "$root/init"

# modules in load order (dependencies first), from modules.dep; built-in ones need nothing
declare -A seen=()
order=()
load() {
  local path deps d
  path=$(awk -F: -v m="$1" '{n=$1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/-/, "_", n)}
                            n == m {print $1; exit}' "$moddir/modules.dep")
  if [ -z "$path" ]; then
    grep -q "/$1.ko" "$moddir/modules.builtin" || { say "no module $1 in $version"; exit 1; }
    return 0
  fi
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  deps=$(awk -F: -v p="$path" '$1 == p {print $2; exit}' "$moddir/modules.dep")
  for d in $deps; do
    d=${d##*/}; d=${d%%.ko*}; load "${d//-/_}"
  done
  order+=("$path")
}
for m in virtio_pci virtio_net 8021q; do load "$m"; done
: > "$root/lib/modules/load-order"
for path in "${order[@]}"; do
  name=${path##*/}
  case "$name" in
    *.ko) cp "$moddir/$path" "$root/lib/modules/$name" ;;
    *.ko.xz) xz -dc "$moddir/$path" > "$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$moddir/$path" > "$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) say "unknown module format: $name"; exit 1 ;;
  esac
  echo "$name" >> "$root/lib/modules/load-order"
done
(cd "$root" && find . | LC_ALL=C sort | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -9 > "$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
rm -rf "$root"
say "built $out/vmlinuz ($version) and $out/initrd.img ($(du -k "$out/initrd.img" | cut -f1) KiB, ${#order[@]} modules)"
