#!/usr/bin/env bash
# Tests the pegan GIMP plug-in in real, headless GIMP 2.10.
#
# The script builds the plug-in, installs it into a throw-away GIMP profile and calls each procedure
# through Script-Fu in `gimp-console-2.10 -i -d -f -b ...` runs. Then it checks the PNG files that
# the runs saved and the marker lines that they printed. gimp-console-2.10 exits 0 even when a batch
# command fails, so every check looks for positive evidence: a file with the expected size and
# pixels, or an expected line on stderr.
#
# Usage: plugins/gimp/tests/run-tests.sh
# Environment:
#   PEGAN_LIB_DIR   folder with libpegan.a to link (default: the workspace's release build, which
#                   the Makefile brings up to date with cargo)
#   KEEP_TEST_DIR   when set to 1, keep the scratch folder and print its path
# Needs gimp-console-2.10, gimptool-2.0, make, a C compiler and pkg-config with gdk-pixbuf-2.0
# (Debian: apt-get install gimp libgimp2.0-dev make gcc pkg-config).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root_dir="$(cd "$here/../../.." && pwd)"
plugin_dir="$root_dir/plugins/gimp"

for tool in gimp-console-2.10 gimptool-2.0 make cc pkg-config timeout; do
    if ! command -v "$tool" > /dev/null; then
        echo "run-tests.sh: $tool is missing: install gimp, libgimp2.0-dev, make, gcc and pkg-config" >&2
        exit 1
    fi
done

scratch="$(mktemp -d /tmp/pegan-gimp-test.XXXXXX)"
if [[ "${KEEP_TEST_DIR:-0}" == 1 ]]; then
    trap 'echo "scratch folder kept: $scratch"' EXIT
else
    trap 'rm -rf "$scratch"' EXIT
fi

# GIMP, GEGL and babl write to the profile, to ~/.cache, to ~/.local/share and to $TMPDIR, so all
# of them point into the scratch folder. GIMP creates $GIMP2_DIRECTORY on its first start.
export HOME="$scratch/home" XDG_CACHE_HOME="$scratch/cache" XDG_CONFIG_HOME="$scratch/config" \
    XDG_DATA_HOME="$scratch/data" TMPDIR="$scratch/tmp" GIMP2_DIRECTORY="$scratch/profile"
mkdir -p "$HOME" "$TMPDIR" "$scratch/work"
logs="$scratch/logs"
mkdir -p "$logs"

failures=0
pass() { echo "ok: $1"; }
fail() { echo "FAIL: $1" >&2; failures=$((failures + 1)); }

# Runs gimp-console-2.10 in the work folder with one batch command per argument, then (gimp-quit 0),
# which it needs to exit at all. Output goes to $logs/NAME.out and $logs/NAME.err.
run_gimp() {
    local name="$1"
    shift
    local batch=()
    for command in "$@"; do
        batch+=(-b "$command")
    done
    local status=0
    (cd "$scratch/work" && timeout 600 gimp-console-2.10 -i -d -f "${gimp_flags[@]}" "${batch[@]}" \
        -b '(gimp-quit 0)' < /dev/null > "$logs/$name.out" 2> "$logs/$name.err") || status=$?
    if [[ $status -ne 0 ]]; then
        fail "gimp-console run '$name' exited with status $status"
        show_log "$name"
    fi
}

show_log() {
    echo "--- stdout of $1" >&2
    cat "$logs/$1.out" >&2
    echo "--- stderr of $1" >&2
    cat "$logs/$1.err" >&2
}

# Checks that the stderr of run NAME contains TEXT (a fixed string).
expect_in_log() {
    local name="$1" text="$2" what="$3"
    if grep -qF -- "$text" "$logs/$name.err"; then
        pass "$what"
    else
        fail "$what: '$text' not found in the stderr of run '$name'"
    fi
}

# Prints the value of KEY in the png-stats line of FILE, or nothing when FILE cannot be read.
stat_of() {
    local file="$1" key="$2"
    "$scratch/png-stats" "$scratch/work/$file" 2> /dev/null | tr ' ' '\n' | sed -n "s/^$key=//p"
}

expect_stat() {
    local file="$1" key="$2" expected="$3"
    local actual
    actual="$(stat_of "$file" "$key")"
    if [[ "$actual" == "$expected" ]]; then
        pass "$file: $key is $expected"
    else
        fail "$file: $key is '${actual:-unreadable}', expected $expected"
    fi
}

# Checks that FILE has more than 50 distinct pixel values, so it is not a constant or near-constant image.
expect_varied() {
    local file="$1"
    local distinct
    distinct="$(stat_of "$file" distinct)"
    if [[ -n "$distinct" && "$distinct" -gt 50 ]]; then
        pass "$file: $distinct distinct pixel values"
    else
        fail "$file: ${distinct:-no} distinct pixel values, expected more than 50"
    fi
}

# Checks that the mean alpha of a column range of FILE is below (lt) or above (gt) LIMIT.
expect_alpha() {
    local file="$1" side="$2" comparison="$3" limit="$4"
    local value
    value="$(stat_of "$file" "${side}_alpha")"
    if [[ -n "$value" ]] && awk -v v="$value" -v l="$limit" -v c="$comparison" \
        'BEGIN { exit !((c == "lt" && v < l) || (c == "gt" && v > l)) }'; then
        pass "$file: mean alpha of the $side quarter is $value"
    else
        fail "$file: mean alpha of the $side quarter is '${value:-unreadable}', expected $comparison $limit"
    fi
}

echo "== build and install into $GIMP2_DIRECTORY"
make -C "$plugin_dir" BUILD_DIR="$scratch/build"
cc -O2 -Wall -o "$scratch/png-stats" "$here/png-stats.c" $(pkg-config --cflags --libs gdk-pixbuf-2.0)

# The first start creates the profile, so the plug-in folder must be made after it.
gimp_flags=()
run_gimp first-start
make -C "$plugin_dir" BUILD_DIR="$scratch/build" PLUGIN_DIR="$GIMP2_DIRECTORY/plug-ins" install

cp "$root_dir/tests/data/singan/balloons.png" "$scratch/work/"

echo "== registration"
gimp_flags=(--verbose)
run_gimp register '
(gimp-message (string-append "pegan-test: registered"
  " retarget=" (number->string (car (gimp-procedural-db-proc-exists "plug-in-pegan-singan-retarget")))
  " train=" (number->string (car (gimp-procedural-db-proc-exists "plug-in-pegan-singan-train")))
  " sample=" (number->string (car (gimp-procedural-db-proc-exists "plug-in-pegan-singan-sample")))))'
if grep -qF "Querying plug-in: '$GIMP2_DIRECTORY/plug-ins/pegan-gimp/pegan-gimp'" "$logs/register.out" "$logs/register.err"; then
    pass "--verbose shows GIMP querying the installed plug-in"
else
    fail "--verbose output does not show GIMP querying $GIMP2_DIRECTORY/plug-ins/pegan-gimp/pegan-gimp"
    show_log register
fi
expect_in_log register "pegan-test: registered retarget=1 train=1 sample=1" "all three procedures are in the PDB"

# Helpers shared by the Script-Fu batch commands. Each -b command is evaluated on its own, so every
# command that uses them starts with this text.
prelude='
(define (mark . parts) (gimp-message (apply string-append "pegan-test: " parts)))
(define (load name) (car (gimp-file-load RUN-NONINTERACTIVE name name)))
(define (active image) (car (gimp-image-get-active-drawable image)))
(define (save image drawable name) (file-png-save-defaults RUN-NONINTERACTIVE image drawable name name))
(define (size-text image)
  (string-append (number->string (car (gimp-image-width image))) "x"
                 (number->string (car (gimp-image-height image)))))
(define (clear-left-half image)
  (let* ((drawable (active image)))
    (gimp-layer-add-alpha drawable)
    (gimp-image-select-rectangle image CHANNEL-OP-REPLACE 0 0
                                 (/ (car (gimp-image-width image)) 2) (car (gimp-image-height image)))
    (gimp-drawable-edit-clear drawable)
    (gimp-selection-none image)))
(define (retarget-new image width height seed stage output)
  (let* ((result (plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image (active image) "model.pegan"
                                                width height seed stage 1))
         (new-image (car result)))
    (save new-image (cadr result) output)
    (mark "saved " output " size " (size-text new-image)
          " precision " (number->string (car (gimp-image-get-precision new-image))))
    (gimp-image-delete new-image)))
'

echo "== train, retarget and sample"
gimp_flags=()
run_gimp main "$prelude"'
(let* ((image (load "balloons.png")))
  (plug-in-pegan-singan-train RUN-NONINTERACTIVE image (active image) "model.pegan" "csg" "tiny" 3 0)
  (mark "trained")
  (retarget-new image 64 40 7 0 "rgb-seed7-a.png")
  (retarget-new image 64 40 7 0 "rgb-seed7-b.png")
  (retarget-new image 64 40 8 0 "rgb-seed8.png")
  (retarget-new image 64 40 7 1 "rgb-stage1.png")
  (gimp-image-delete image))
(let* ((image (load "balloons.png")))
  (clear-left-half image)
  (retarget-new image 50 30 7 0 "rgba.png")
  (gimp-image-delete image))
(let* ((image (load "balloons.png")))
  (gimp-image-convert-grayscale image)
  (retarget-new image 48 36 7 0 "grey.png")
  (gimp-image-delete image))
(let* ((image (load "balloons.png")))
  (clear-left-half image)
  (gimp-image-convert-grayscale image)
  (retarget-new image 52 32 7 0 "grey-alpha.png")
  (gimp-image-delete image))
(let* ((image (load "balloons.png")))
  (gimp-image-convert-precision image PRECISION-U16-GAMMA)
  (let* ((result (plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image (active image) "model.pegan"
                                                70 45 7 0 0)))
    (mark "in place: same image " (if (= (car result) image) "yes" "no")
          " image size " (size-text image)
          " layer size " (number->string (car (gimp-drawable-width (cadr result)))) "x"
                         (number->string (car (gimp-drawable-height (cadr result)))))
    (save image (cadr result) "u16-in-place.png"))
  (gimp-image-delete image))
(let* ((image (load "balloons.png")))
  (gimp-image-convert-precision image PRECISION-FLOAT-LINEAR)
  (retarget-new image 40 40 7 0 "float-linear.png")
  (gimp-image-delete image))
(let* ((image (load "balloons.png"))
       (result (plug-in-pegan-singan-sample RUN-NONINTERACTIVE image (active image) "model.pegan" 3 5))
       (layers (caddr result)))
  (mark "sample added " (number->string (cadr result))
        " image has " (number->string (car (gimp-image-get-layers image))) " layers"
        " top layer first " (if (= (car result) (vector-ref layers 0)) "yes" "no"))
  (save image (vector-ref layers 0) "sample-0.png")
  (save image (vector-ref layers 1) "sample-1.png")
  (save image (vector-ref layers 2) "sample-2.png")
  (gimp-image-delete image))
(mark "main done")'

expect_in_log main "pegan-test: trained" "training with the tiny preset finished"
expect_in_log main "pegan-test: main done" "every procedure call of the main run succeeded"
if [[ ! -s "$scratch/work/model.pegan" ]]; then
    fail "train wrote no model file"
    show_log main
fi

for file in rgb-seed7-a.png rgb-seed7-b.png rgb-seed8.png rgb-stage1.png; do
    expect_stat "$file" width 64
    expect_stat "$file" height 40
    expect_stat "$file" color_type 2
    expect_varied "$file"
done

seed7="$(stat_of rgb-seed7-a.png hash)"
if [[ -n "$seed7" && "$seed7" == "$(stat_of rgb-seed7-b.png hash)" ]]; then
    pass "the same seed gives the same pixels"
else
    fail "two retargets with seed 7 differ"
fi
if [[ -n "$seed7" && "$seed7" != "$(stat_of rgb-seed8.png hash)" ]]; then
    pass "another seed gives other pixels"
else
    fail "seeds 7 and 8 give the same pixels"
fi

expect_stat rgba.png width 50
expect_stat rgba.png height 30
expect_stat rgba.png color_type 6
expect_varied rgba.png
expect_alpha rgba.png left lt 10
expect_alpha rgba.png right gt 245

expect_stat grey.png width 48
expect_stat grey.png height 36
expect_stat grey.png color_type 0
expect_varied grey.png

expect_stat grey-alpha.png width 52
expect_stat grey-alpha.png height 32
expect_stat grey-alpha.png color_type 4
expect_alpha grey-alpha.png left lt 10
expect_alpha grey-alpha.png right gt 245

expect_in_log main "pegan-test: in place: same image yes image size 70x45 layer size 70x45" \
    "in-place retarget resizes the layer and the canvas"
expect_stat u16-in-place.png width 70
expect_stat u16-in-place.png height 45
expect_stat u16-in-place.png bit_depth 16
expect_varied u16-in-place.png

# 600 is GIMP_PRECISION_FLOAT_LINEAR: the new image keeps the precision of the input.
expect_in_log main "pegan-test: saved float-linear.png size 40x40 precision 600" \
    "a 32-bit float linear image gives a new image of the same precision"
expect_varied float-linear.png

expect_in_log main "pegan-test: sample added 3 image has 4 layers top layer first yes" "sample adds three layers"
# The tiny preset shrinks the long side to 24 pixels, so the 248x186 balloons train at 24x18.
sample_hashes=()
for file in sample-0.png sample-1.png sample-2.png; do
    expect_stat "$file" width 24
    expect_stat "$file" height 18
    expect_varied "$file"
    sample_hashes+=("$(stat_of "$file" hash)")
done
if [[ "$(printf '%s\n' "${sample_hashes[@]}" | sort -u | wc -l)" == 3 ]]; then
    pass "the three samples differ"
else
    fail "some of the three samples are identical"
fi

echo "== errors"
# Each failing call is caught so that the batch command goes on. GIMP prints the plug-in's message
# on stderr after the line "Calling error for procedure '...':", whatever the error status.
expect_failure() {
    local label="$1" call="$2"
    printf '%s' "
(let* ((image (load \"balloons.png\"))
       (drawable (active image))
       (outcome (catch 'failed $call)))
  (mark \"$label \" (if (eq? outcome 'failed) \"failed\" \"succeeded\"))
  (gimp-image-delete image))"
}

run_gimp errors \
    "$prelude$(expect_failure missing-model '(plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image drawable "missing.pegan" 32 32 1 0 1)')" \
    "$prelude$(expect_failure wrong-kind '(plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image drawable "balloons.png" 32 32 1 0 1)')" \
    "$prelude$(expect_failure too-large '(plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image drawable "model.pegan" 70000 32 1 0 1)')" \
    "$prelude$(expect_failure bad-stage '(plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image drawable "model.pegan" 32 32 1 99 1)')" \
    "$prelude$(expect_failure zero-width '(plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image drawable "model.pegan" 0 32 1 0 1)')" \
    "$prelude$(expect_failure bad-variant '(plug-in-pegan-singan-train RUN-NONINTERACTIVE image drawable "other.pegan" "nope" "tiny" 0 0)')" \
    "$prelude$(expect_failure sample-missing '(plug-in-pegan-singan-sample RUN-NONINTERACTIVE image drawable "missing.pegan" 2 0)')" \
    "$prelude$(expect_failure sample-count '(plug-in-pegan-singan-sample RUN-NONINTERACTIVE image drawable "model.pegan" 0 0)')" \
    '(let* ((image (car (gimp-file-load RUN-NONINTERACTIVE "balloons.png" "balloons.png"))))
       (plug-in-pegan-singan-retarget RUN-NONINTERACTIVE image (car (gimp-image-get-active-drawable image))
                                      "missing.pegan" 32 32 1 0 1))' \
    "$prelude"'
(let* ((image (load "balloons.png")))
  (retarget-new image 64 40 7 0 "rgb-seed7-c.png")
  (gimp-image-delete image))
(mark "alive after errors")'

for label in missing-model wrong-kind too-large bad-stage zero-width bad-variant sample-missing sample-count; do
    expect_in_log errors "pegan-test: $label failed" "$label returns an error status"
done
expect_in_log errors "Model file 'missing.pegan' was not found" "missing model file message"
expect_in_log errors "'balloons.png' is not a pegan SinGAN model file" "wrong model kind message"
expect_in_log errors "(PEGAN_STATUS_TOO_LARGE)" "too large size message"
expect_in_log errors "start stage" "start stage out of range message"
expect_in_log errors "width and height must be at least 1 pixel, got 0 x 32" "zero width message"
expect_in_log errors "Unknown variant 'nope'" "unknown variant message"
expect_in_log errors "count must be between 1 and 100, got 0" "sample count message"
# Uncaught, Script-Fu names the status: "failed: MESSAGE" is GIMP_PDB_EXECUTION_ERROR, while a
# calling error would read "failed on invalid input arguments".
expect_in_log errors "Procedure execution of plug-in-pegan-singan-retarget failed: Model file" \
    "a missing model file is an execution error"
expect_in_log errors "pegan-test: alive after errors" "GIMP keeps working after the errors"
for name in main errors; do
    if grep -qE "crashed|CRITICAL" "$logs/$name.err"; then
        fail "a plug-in crashed or GIMP reported a critical error in run '$name'"
    else
        pass "no plug-in crashed in run '$name'"
    fi
done
if [[ -n "$seed7" && "$seed7" == "$(stat_of rgb-seed7-c.png hash)" ]]; then
    pass "the same seed gives the same pixels in another GIMP process"
else
    fail "seed 7 gave other pixels in another GIMP process"
fi

if [[ $failures -gt 0 ]]; then
    echo "$failures check(s) failed; logs:" >&2
    for name in main errors; do
        show_log "$name"
    done
    exit 1
fi
echo "all GIMP plug-in checks passed"
