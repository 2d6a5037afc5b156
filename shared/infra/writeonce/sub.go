package writeonce

import (
	"fmt"

	"github.com/sovkeys/sovkeys/shared"
)

// Sub returns a store over the same S3 client and bucket whose names live
// under prefix, appended to this store's own prefix: names stay flat
// ValidNames, and the key of name n is <this prefix><prefix>n. The audit
// log uses it for its per-scope directories ("audit/tenant/<token>/"). The
// write-once proof is shared: a Sub of a proven store is proven.
func (s *S3Store) Sub(prefix string) (*S3Store, error) {
	if prefix == "" || !validPrefix(prefix) {
		return nil, fmt.Errorf("%w: ektstore s3: sub prefix %q: want path segments of [A-Za-z0-9-_.] ending in \"/\"",
			shared.ErrConfigValidation, prefix)
	}
	s.mu.Lock()
	proven := s.proven
	s.mu.Unlock()
	return &S3Store{api: s.api, bucket: s.bucket, prefix: s.prefix + prefix, proven: proven}, nil
}

// Bucket returns the store's bucket name.
func (s *S3Store) Bucket() string { return s.bucket }
