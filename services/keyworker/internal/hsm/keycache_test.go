package hsm

import (
	"fmt"
	"testing"

	"github.com/miekg/pkcs11"
)

func TestKeyCacheBounded(t *testing.T) {
	c := keyCache{max: 3}
	for i := range 10 {
		c.put(fmt.Sprint(i), cachedKey{handle: pkcs11.ObjectHandle(i)})
	}
	if got := len(c.m); got != 3 {
		t.Fatalf("cache holds %d entries, want 3", got)
	}
	if _, ok := c.get("9"); !ok {
		t.Error("latest entry missing")
	}
	c.drop("9")
	if _, ok := c.get("9"); ok {
		t.Error("dropped entry still present")
	}
}
