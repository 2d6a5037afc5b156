package writeonce

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Overwrite stores data under name whatever is there: the one mutable key
// a write-once layout may need (C2SP tlog-tiles' "checkpoint", whose history
// is kept write-once beside it). It carries the SHA-256 Get checks.
func (s *S3Store) Overwrite(ctx context.Context, name string, data []byte) error {
	if err := checkInput(name, data); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	_, err := s.api.PutObject(ctx, &s3.PutObjectInput{
		Bucket:         aws.String(s.bucket),
		Key:            aws.String(s.key(name)),
		Body:           bytes.NewReader(data),
		ContentLength:  aws.Int64(int64(len(data))),
		ContentType:    aws.String("application/octet-stream"),
		ChecksumSHA256: aws.String(base64.StdEncoding.EncodeToString(sum[:])),
		Metadata:       map[string]string{metaSHA256: hex.EncodeToString(sum[:])},
	})
	if err != nil {
		return fmt.Errorf("ektstore: s3 overwrite %s: %w", s.key(name), err)
	}
	return nil
}
