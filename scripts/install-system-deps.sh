#!/usr/bin/env bash
# Installs the Debian packages hpcvision uses when this machine allows it (root + apt):
# the real Fashion-MNIST images, WordNet 3.0 (the words of every ImageNet synset), OpenMPI for
# multi-process tests, shellcheck for job scripts.
# Elsewhere it says what is missing and carries on: everything still runs on synthetic data.
set -u
packages=(dataset-fashion-mnist wordnet-base openmpi-bin libopenmpi-dev shellcheck)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || echo "warning: apt-get could not install ${missing[*]}; tests that need them will say so" >&2
else
    echo "note: not root or no apt-get; not installing ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
fi
exit 0
