package disk

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A GPT made by the real sgdisk, laid out as the original sk-prep-dev
// does, reads back with blkid's disk GUID and sgdisk's extents; corrupting
// the header or the entries is detected.
func TestReadGPTMatchesSgdiskAndBlkid(t *testing.T) {
	for _, tool := range []string{"sgdisk", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps installs gdisk): %v", tool, err)
		}
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("sgdisk", "-o", "-n", "128:2048:4095", "-c", "128:Secret Store", "-A", "128:set:63", "-n", "1:4096:0", "-c", "1:Data", img)
	want := run("blkid", "-p", "-s", "PTUUID", "-o", "value", img)

	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := ReadGPT(f, 512)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if tbl.DiskGUID != want {
		t.Fatalf("disk GUID %s, blkid says %s", tbl.DiskGUID, want)
	}
	ss, data := tbl.Partitions[128], tbl.Partitions[1]
	if ss.Start != 2048*512 || ss.Size != 1<<20 || ss.Name != "Secret Store" || ss.Attributes != 1<<63 {
		t.Fatalf("secret store partition %+v", ss)
	}
	if data.Start != 4096*512 || data.Name != "Data" || data.Size <= 0 || len(tbl.Partitions) != 2 {
		t.Fatalf("data partition %+v (%d partitions)", data, len(tbl.Partitions))
	}

	for name, off := range map[string]int64{"header": 512 + 60, "entries": 1024 + 40} {
		t.Run("corrupt "+name, func(t *testing.T) {
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			b[off] ^= 0xff
			bad := filepath.Join(t.TempDir(), "bad.img")
			if err := os.WriteFile(bad, b, 0o600); err != nil {
				t.Fatal(err)
			}
			f, _ := os.Open(bad)
			defer f.Close()
			if _, err := ReadGPT(f, 512); !errors.Is(err, ErrNoGPT) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestFormatGUID(t *testing.T) {
	b := []byte{0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	if got := FormatGUID(b); got != "00112233-4455-6677-8899-aabbccddeeff" {
		t.Fatal(got)
	}
}
