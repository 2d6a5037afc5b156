package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
)

// TestBackupKeyShares: the backup key comes back from the threshold of
// shares; too few, mixed or altered shares are refused with a clear error.
func TestBackupKeyShares(t *testing.T) {
	key := randBytes(t, 32)
	id := backupKeyID(key)
	parts, err := shamir.Split(key, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	line := func(id string, p shamir.Share) string {
		return fmt.Sprintf("%s%s:2:%d:%s", backupSharePrefix, id, p.X, hex.EncodeToString(p.Y))
	}
	got, err := combineBackupShares([]string{line(id, parts[0]), line(id, parts[2])})
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("two of three shares: %v", err)
	}
	altered := parts[1]
	altered.Y = append([]byte{}, altered.Y...)
	altered.Y[0] ^= 1
	otherParts, _ := shamir.Split(randBytes(t, 32), 3, 2)
	for _, tc := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"one share", []string{line(id, parts[0])}, "1 shares given, 2 needed"},
		{"altered share", []string{line(id, parts[0]), line(id, altered)}, "do not rebuild"},
		{"shares of two keys", []string{line(id, parts[0]), line("0011223344556677", otherParts[1])}, "different backup keys"},
		{"not a share", []string{"sovkeys-share:v2:xyz", line(id, parts[0])}, "not a sovkeys backup-key share"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := combineBackupShares(tc.lines); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
