package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Entry is one line of the automount file: DEVICE:MOUNT_POINT, the
// original agent's format (/etc/sovereign-keys/automount.conf).
type Entry struct{ Device, MountPoint string }

// ParseEntry splits DEVICE:MOUNT_POINT at the first ":/" (a by-path device
// name may hold colons; a mount point starts with /).
func ParseEntry(line string) (Entry, error) {
	i := strings.Index(line, ":/")
	if i <= 0 {
		return Entry{}, fmt.Errorf("%q: want DEVICE:/MOUNT_POINT", line)
	}
	return Entry{Device: line[:i], MountPoint: line[i+1:]}, nil
}

// ReadAutomount reads the automount file; a missing file is empty.
func ReadAutomount(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		e, err := ParseEntry(s)
		if err != nil {
			return nil, usagef("%s:%d: %v", path, n, err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// AddAutomount registers e, replacing any entry for the same device; the
// file is replaced atomically.
func AddAutomount(path string, e Entry) error {
	if !filepath.IsAbs(e.MountPoint) {
		return usagef("mount point %q must be absolute", e.MountPoint)
	}
	entries, err := ReadAutomount(path)
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("# sovkeys volumes mounted at boot by `sk-agent automount` (DEVICE:MOUNT_POINT)\n")
	for _, x := range entries {
		if x.Device != e.Device {
			fmt.Fprintf(&b, "%s:%s\n", x.Device, x.MountPoint)
		}
	}
	fmt.Fprintf(&b, "%s:%s\n", e.Device, e.MountPoint)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// AutomountOptions are automount's options.
type AutomountOptions struct {
	Check            bool
	IgnoreNitroCheck bool
}

// Automount mounts every registered volume; one failing does not stop the
// others. The error joins every failure.
func (a *Agent) Automount(ctx context.Context, o AutomountOptions) error {
	entries, err := ReadAutomount(a.Cfg.AutomountFile)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		fmt.Fprintln(a.Out, "no volume registered in", a.Cfg.AutomountFile)
		return nil
	}
	var errs []error
	for _, e := range entries {
		fmt.Fprintf(a.Out, "== %s on %s\n", e.Device, e.MountPoint)
		err := a.Mount(ctx, MountOptions{Device: e.Device, MountPoint: e.MountPoint, Check: o.Check, IgnoreNitroCheck: o.IgnoreNitroCheck})
		if err != nil {
			a.Log.Error("automount failed", "device", e.Device, "mount_point", e.MountPoint, "exit_code", int(Code(err)), "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", e.Device, err))
		}
	}
	fmt.Fprintf(a.Out, "automount: %d of %d volumes done\n", len(entries)-len(errs), len(entries))
	return errors.Join(errs...)
}
