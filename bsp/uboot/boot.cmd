# tether A/B boot script for U-Boot (compile with: mkimage -A arm -T script -C none -d boot.cmd boot.scr).
#
# The RAUC-compatible scheme the agent writes: BOOT_ORDER lists slot names, first tried
# first; BOOT_<name>_LEFT counts the boot attempts a slot has left. Each boot takes one
# attempt from the first slot in BOOT_ORDER that has any, and boots it with
# tether.slot=<name> on the kernel command line. The agent gives a committed slot its
# attempts back after every boot (agent ota check, also run by `agent run`), and sets a new
# slot's attempts to 0 before writing it, so a half-written slot is never booted.
#
# Adapt the partitions and load commands below to the board.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv bootslot
for slot in ${BOOT_ORDER}; do
  if test "x${bootslot}" = "x"; then
    if test "x${slot}" = "xA" && test ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
      setenv bootslot A
      setenv rootpart 2
    elif test "x${slot}" = "xB" && test ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
      setenv bootslot B
      setenv rootpart 3
    fi
  fi
done

if test "x${bootslot}" = "x"; then
  # No slot has attempts left: both failed. Give both their attempts back and try again
  # rather than leave the board dead; the agent will report what happened.
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  saveenv
  reset
fi

saveenv
setenv bootargs "${bootargs} root=/dev/mmcblk0p${rootpart} rootwait tether.slot=${bootslot}"
load mmc 0:${rootpart} ${kernel_addr_r} /boot/Image
load mmc 0:${rootpart} ${fdt_addr_r} /boot/${fdtfile}
booti ${kernel_addr_r} - ${fdt_addr_r}
