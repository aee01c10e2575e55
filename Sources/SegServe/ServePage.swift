// The page `segtrain serve` shows at `/`: pick an image, see its mask and its cut-out side by side.
// Without JavaScript the form posts the file (multipart/form-data) to /v1/segment and the browser
// shows the mask; with it, both endpoints are called and the results shown next to the image.

enum ServePage {
    static func html(classes: Int, imageSize: Int, maxBodyBytes: Int) -> String {
        let model = classes == 1 ? "binary model" : "\(classes)-class model"
        return """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>segtrain serve</title>
        <style>
          body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
          form { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; margin-bottom: 1.5rem; }
          .results { display: flex; flex-wrap: wrap; gap: 1.5rem; }
          figure { margin: 0; }
          figcaption { font-size: 0.9rem; color: #555; margin-bottom: 0.3rem; }
          figure img { max-width: 28rem; max-height: 28rem; border: 1px solid #ccc; display: block; }
          .checker { background-color: #fff;
            background-image: linear-gradient(45deg, #ddd 25%, transparent 25%), linear-gradient(-45deg, #ddd 25%, transparent 25%),
              linear-gradient(45deg, transparent 75%, #ddd 75%), linear-gradient(-45deg, transparent 75%, #ddd 75%);
            background-size: 16px 16px; background-position: 0 0, 0 8px, 8px -8px, -8px 0; }
          #status { min-height: 1.5em; }
          .error { color: #b00020; }
          small { color: #666; }
        </style>
        </head>
        <body>
        <h1>segtrain serve</h1>
        <p><small>A \(model) trained at \(imageSize)&times;\(imageSize) px. PNG or JPEG up to \(maxBodyBytes) bytes.
        API: <code>POST /v1/segment</code>, <code>POST /v1/remove-background[?background=%23RRGGBB]</code>, <code>GET /healthz</code>.</small></p>
        <form id="form" action="/v1/segment" method="post" enctype="multipart/form-data">
          <input id="image" type="file" name="image" accept="image/png,image/jpeg" required>
          <label><input id="use-background" type="checkbox"> background colour</label>
          <input id="background" type="color" value="#00ff00">
          <button type="submit">Segment</button>
        </form>
        <div id="status"></div>
        <div class="results">
          <figure><figcaption>image</figcaption><img id="original" alt=""></figure>
          <figure><figcaption>mask</figcaption><img id="mask" alt=""></figure>
          <figure><figcaption>cut-out</figcaption><img id="cutout" class="checker" alt=""></figure>
        </div>
        <script>
        const maxBodyBytes = \(maxBodyBytes);
        const form = document.getElementById("form");
        const status = document.getElementById("status");
        const urls = [];

        function show(id, blob) {
          const url = URL.createObjectURL(blob);
          urls.push(url);
          document.getElementById(id).src = url;
        }

        async function call(path, file) {
          const body = new FormData();
          body.append("image", file);
          const response = await fetch(path, { method: "POST", body: body });
          if (!response.ok) {
            let message = response.status + " " + response.statusText;
            try { message = (await response.json()).error || message; } catch (e) {}
            throw new Error(message);
          }
          return response.blob();
        }

        form.addEventListener("submit", async (event) => {
          event.preventDefault();
          const file = document.getElementById("image").files[0];
          if (!file) return;
          status.className = "";
          if (file.size > maxBodyBytes) {
            status.className = "error";
            status.textContent = file.name + " is " + file.size + " bytes; the limit is " + maxBodyBytes + ".";
            return;
          }
          while (urls.length) URL.revokeObjectURL(urls.pop());
          for (const id of ["mask", "cutout"]) document.getElementById(id).removeAttribute("src");
          show("original", file);
          status.textContent = "Segmenting " + file.name + " ...";
          let cutoutPath = "/v1/remove-background";
          if (document.getElementById("use-background").checked) {
            cutoutPath += "?background=" + encodeURIComponent(document.getElementById("background").value);
          }
          const start = performance.now();
          try {
            const [mask, cutout] = await Promise.all([call("/v1/segment", file), call(cutoutPath, file)]);
            show("mask", mask);
            show("cutout", cutout);
            status.textContent = file.name + ": " + Math.round(performance.now() - start) + " ms";
          } catch (error) {
            status.className = "error";
            status.textContent = file.name + ": " + error.message;
          }
        });
        </script>
        </body>
        </html>

        """
    }
}
