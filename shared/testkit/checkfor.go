// Package testkit holds helpers shared by the tests of every package.
package testkit

import (
	"testing"
	"time"
)

// CheckFor polls f every `every` until it returns nil; after total it fails
// the test with f's last error.
func CheckFor(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", total, err)
		}
		time.Sleep(every)
	}
}
