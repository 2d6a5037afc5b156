package xks_test

import (
	"encoding/base64"
	"fmt"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
)

func ExampleParsePath() {
	r, err := xks.ParsePath("/keystores/a1/kms/xks/v1/keys/b42c7fbf-de61/encrypt")
	fmt.Printf("%q %q %s %v\n", r.Prefix, r.KeyID, r.Op, err)

	_, err = xks.ParsePath("/keystores/a1/kms/xks/v1/health/")
	fmt.Println(shared.CodeOf(err))
	// Output:
	// "keystores/a1" "b42c7fbf-de61" encrypt <nil>
	// invalid_uri_path
}

func ExampleParseEncrypt() {
	r, err := xks.ParseEncrypt([]byte(`{
		"requestMetadata": {
			"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
			"kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
			"kmsOperation": "GenerateDataKey",
			"kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae"
		},
		"plaintext": "SGVsbG8gV29ybGQh",
		"encryptionAlgorithm": "AES_GCM"
	}`))
	fmt.Println(len(r.Plaintext), r.RequestMetadata.KMSRequestID, err)

	_, err = xks.ParseEncrypt([]byte(`{"requestMetadata": {"kmsOperation": "Encrypt"}}`))
	fmt.Println(shared.CodeOf(err), shared.MessageOf(err))
	// Output:
	// 12 4112f4d6-db54-4af4-ae30-c55a22a8dfae <nil>
	// validation xks: requestMetadata.awsPrincipalArn is required
}

func ExampleEncodeAAD() {
	fmt.Printf("%x\n", xks.EncodeAAD(nil, nil))
	fmt.Printf("%x\n", xks.EncodeAAD([]byte("ab"), []byte("v1")))
	// Output:
	// 000000
	// 00026162027631
}

// The worked example of the specification's Appendix C.
func ExampleCDIV() {
	dec := base64.StdEncoding.DecodeString
	aad, _ := dec("cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n")
	meta, _ := dec("a2V5X3ZlcnNpb249MQ==")
	iv, _ := dec("HMrlRw85cAJUd5Ax")
	ct, _ := dec("ghxkK1txeDNn3q8Y")
	tag, _ := dec("vBxN2ncH1oEkR8WVXpmyYQ==")
	fmt.Println(base64.StdEncoding.EncodeToString(xks.CDIV(aad, meta, iv, ct, tag)))
	// Output:
	// qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=
}
