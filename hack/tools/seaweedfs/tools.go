//go:build tools

// Package tools pins the binaries built from this module.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
