package kwadmin

import "github.com/sovkeys/sovkeys/shared"

// EndpointKeyVersion lists, rotates and changes the versions of an HSM key.
const EndpointKeyVersion = shared.EndpointKeyVersion

// Key version actions.
const (
	VersionList        = "list"         // every version and its state
	VersionRotate      = "rotate"       // make the next version; encrypts move to it
	VersionDecryptOnly = "decrypt-only" // an older version stops encrypting
	VersionDisable     = "disable"      // an older version stops decrypting too
	VersionEnable      = "enable"       // a disabled version decrypts again
	VersionDestroy     = "destroy"      // a disabled version: first without Confirm, then with the code returned
	// VersionSchedule sets (Every > 0) or clears (Every = 0) the key's
	// automatic rotation period; the pool's keyworkers then rotate it.
	VersionSchedule = "schedule"
)

// KeyVersionRequest acts on the versions of the key labelled Label.
type KeyVersionRequest struct {
	Label   string `json:"label"`
	Action  string `json:"action"`
	Version int    `json:"version,omitempty"` // not for list and rotate
	Confirm string `json:"confirm,omitempty"` // destroy, second step
	// Every is the automatic rotation period (schedule), in whole seconds.
	EverySeconds int64 `json:"every_seconds,omitempty"`
	// Audit context, recorded by the keyworker with the version: the key
	// store and key id are checked against the registry (the key must be
	// that key store's, in this pool); the person is the request's signer.
	Keystore string `json:"keystore,omitempty"`
	KeyID    string `json:"key_id,omitempty"`
	// Operator is ignored (kept for requests of earlier versions).
	Operator string `json:"operator,omitempty"`
}

// KeyVersionInfo is one version of a key.
type KeyVersionInfo struct {
	Version int    `json:"version"`
	State   string `json:"state"` // ACTIVE, ENABLED, DECRYPT_ONLY, DISABLED
	Encrypt bool   `json:"encrypt"`
	Decrypt bool   `json:"decrypt"`
}

// KeyVersionResponse answers every action with the key's versions after
// it; a destroy's first step also carries the code the second must repeat.
type KeyVersionResponse struct {
	Label     string           `json:"label"`
	Versions  []KeyVersionInfo `json:"versions"`
	Changed   int              `json:"changed,omitempty"` // the version made or changed
	Confirm   string           `json:"confirm,omitempty"`
	Destroyed bool             `json:"destroyed,omitempty"`
	// RotateEverySeconds and NextRotation describe the automatic rotation
	// (absent: none).
	RotateEverySeconds int64  `json:"rotate_every_seconds,omitempty"`
	NextRotation       string `json:"next_rotation,omitempty"` // RFC 3339
	// Pending is the id of the request waiting for approval when the
	// action needs a quorum (Need people; Signers have signed so far).
	Pending string   `json:"pending,omitempty"`
	Need    int      `json:"need,omitempty"`
	Signers []string `json:"signers,omitempty"`
}
