package disk

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCheckNotInUse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		holders map[string]string // partition or disk -> holder
		mounts  string
		inUse   bool
	}{
		{"idle", nil, "/dev/sdg1 /mnt/x ext4 rw 0 0\n", false},
		{"disk mounted", nil, "/dev/sdf /mnt/x ext4 rw 0 0\n", true},
		{"partition mounted", nil, "/dev/sdf1 /mnt/x ext4 rw 0 0\n", true},
		{"partition held by dm", map[string]string{"sdf1": "dm-0"}, "", true},
		{"disk held by md", map[string]string{"sdf": "md0"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := t.TempDir()
			for _, p := range []string{"class/block/sdf/holders", "class/block/sdf/sdf1/holders"} {
				if err := os.MkdirAll(filepath.Join(sys, p), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			os.WriteFile(filepath.Join(sys, "class/block/sdf/sdf1/partition"), []byte("1\n"), 0o644)
			// As in sysfs, the partition is also listed in class/block itself.
			if err := os.Symlink("sdf/sdf1", filepath.Join(sys, "class/block/sdf1")); err != nil {
				t.Fatal(err)
			}
			for dev, h := range tc.holders {
				dir := "class/block/sdf/holders"
				if dev == "sdf1" {
					dir = "class/block/sdf/sdf1/holders"
				}
				os.MkdirAll(filepath.Join(sys, dir, h), 0o755)
			}
			mounts := filepath.Join(t.TempDir(), "mounts")
			os.WriteFile(mounts, []byte(tc.mounts), 0o644)
			err := (&Disk{Name: "sdf", Path: "/dev/sdf"}).CheckNotInUse(sys, mounts)
			if errors.Is(err, ErrInUse) != tc.inUse {
				t.Fatalf("got %v", err)
			}
		})
	}
}
