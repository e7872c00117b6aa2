// JavaScript Promise Integration for the library's waits on the device
// (src/gpu/browser.rs): `suspend` sets the wasm stack aside until a device
// callback calls `wake` (or a second passes: the library then looks again,
// and a wait that is never answered ends in its timeout, not a hang).
// wasm-bindgen's glue imports this module as `rowstage_jspi`.
export const jspi = typeof WebAssembly.Suspending === "function" && typeof WebAssembly.promising === "function";

let resume = null;
let timer = null;

export function wake() {
  const r = resume;
  resume = null;
  clearTimeout(timer);
  if (r) r();
}

export const suspend = jspi
  ? new WebAssembly.Suspending(() => new Promise((r) => {
      resume = r;
      timer = setTimeout(wake, 1000);
    }))
  : () => {
      throw new Error("this browser has no JavaScript Promise Integration (WebAssembly.Suspending)");
    };
