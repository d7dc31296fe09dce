// Reports what a Go program sees: the statfs type of each path given (a raw statfs system
// call, which no LD_PRELOAD shim can intercept) and containerd/cgroups' Mode().
package main

import (
	"fmt"
	"os"

	"github.com/containerd/cgroups"
	"golang.org/x/sys/unix"
)

func main() {
	for _, path := range os.Args[1:] {
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil {
			fmt.Printf("statfs %s: %v\n", path, err)
			continue
		}
		fmt.Printf("statfs %s: %x\n", path, st.Type)
	}
	names := map[cgroups.CGMode]string{
		cgroups.Unavailable: "unavailable", cgroups.Legacy: "legacy",
		cgroups.Hybrid: "hybrid", cgroups.Unified: "unified",
	}
	fmt.Printf("mode: %s\n", names[cgroups.Mode()])
}
