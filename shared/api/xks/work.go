package xks

import (
	"encoding/binary"
)

// The work form: an encrypt or decrypt request authn has parsed and
// validated, as it travels on to a keyworker. The JSON body is parsed once,
// by authn, after the signature over it is verified; the keyworker reads
// the fields it needs from a length-prefixed binary record instead of
// parsing the caller's JSON a second time. requestMetadata does not travel
// here: authn copies what the keyworker and the audit record need into the
// envelope's Authz.
//
//	"XKW1" op(1: 'E' or 'D') then, per field, uvarint length and bytes:
//	  E: plaintext, additionalAuthenticatedData, ciphertextDataIntegrityValueAlgorithm
//	  D: ciphertext, initializationVector, authenticationTag,
//	     additionalAuthenticatedData, ciphertextMetadata
//
// Parsing a work record re-checks every size and value the keyworker relies
// on, so a malformed record fails as a validation error, never as an HSM
// call with odd arguments.
const workMagic = "XKW1"

const (
	workEncrypt byte = 'E'
	workDecrypt byte = 'D'
)

// AppendWork appends the work form of r (validated by ParseEncrypt) to dst.
func (r *EncryptRequest) AppendWork(dst []byte) []byte {
	dst = append(dst, workMagic...)
	dst = append(dst, workEncrypt)
	dst = appendField(dst, r.Plaintext)
	dst = appendField(dst, r.AdditionalAuthenticatedData)
	return appendField(dst, []byte(r.CiphertextDataIntegrityValueAlgorithm))
}

// AppendWork appends the work form of r (validated by ParseDecrypt) to dst.
func (r *DecryptRequest) AppendWork(dst []byte) []byte {
	dst = append(dst, workMagic...)
	dst = append(dst, workDecrypt)
	for _, f := range [][]byte{r.Ciphertext, r.InitializationVector, r.AuthenticationTag,
		r.AdditionalAuthenticatedData, r.CiphertextMetadata} {
		dst = appendField(dst, f)
	}
	return dst
}

// ParseEncryptWork reads the work form of an encrypt request. Its byte
// fields alias b. RequestMetadata is empty; EncryptionAlgorithm is
// AlgorithmAESGCM, the only one ParseEncrypt lets through.
func ParseEncryptWork(b []byte) (*EncryptRequest, error) {
	w, err := openWork(b, workEncrypt, 3)
	if err != nil {
		return nil, err
	}
	r := &EncryptRequest{EncryptionAlgorithm: AlgorithmAESGCM, Plaintext: w[0], AdditionalAuthenticatedData: w[1],
		CiphertextDataIntegrityValueAlgorithm: string(w[2])}
	switch {
	case len(r.Plaintext) == 0:
		return nil, nonEmpty("plaintext")
	case len(r.Plaintext) > MaxPlaintextBytes:
		return nil, tooLarge("plaintext", MaxPlaintextBytes)
	case len(r.AdditionalAuthenticatedData) > MaxAADBytes:
		return nil, tooLarge("additionalAuthenticatedData", MaxAADBytes)
	case r.CiphertextDataIntegrityValueAlgorithm != "" && r.CiphertextDataIntegrityValueAlgorithm != CDIVAlgorithmSHA256:
		return nil, invalidCDIVAlgorithm()
	}
	return r, nil
}

// ParseDecryptWork reads the work form of a decrypt request. Its byte
// fields alias b. RequestMetadata is empty; EncryptionAlgorithm is
// AlgorithmAESGCM.
func ParseDecryptWork(b []byte) (*DecryptRequest, error) {
	w, err := openWork(b, workDecrypt, 5)
	if err != nil {
		return nil, err
	}
	r := &DecryptRequest{EncryptionAlgorithm: AlgorithmAESGCM, Ciphertext: w[0], InitializationVector: w[1],
		AuthenticationTag: w[2], AdditionalAuthenticatedData: w[3], CiphertextMetadata: w[4]}
	// DecryptRequest.Validate without requestMetadata, which stays in authn.
	md := r.RequestMetadata
	r.RequestMetadata = RequestMetadata{AWSPrincipalArn: "-", KMSKeyArn: "-", KMSOperation: "-", KMSRequestID: "-"}
	err = r.Validate()
	r.RequestMetadata = md
	if err != nil {
		return nil, err
	}
	return r, nil
}

func appendField(dst, f []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(f)))
	return append(dst, f...)
}

// openWork splits a work record of op into its n fields; each may be
// empty, none may run past the record, and nothing may follow the last.
func openWork(b []byte, op byte, n int) ([][]byte, error) {
	if len(b) < len(workMagic)+1 || string(b[:len(workMagic)]) != workMagic || b[len(workMagic)] != op {
		return nil, invalid("work record is not a %c request", op)
	}
	b = b[len(workMagic)+1:]
	fields := make([][]byte, n)
	for i := range fields {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, invalid("work record is truncated")
		}
		if l > 0 {
			fields[i] = b[k : k+int(l)]
		}
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, invalid("work record has trailing bytes")
	}
	return fields, nil
}
