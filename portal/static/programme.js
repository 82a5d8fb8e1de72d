// Programme page improvements; the page works the same without them.
(function () {
  "use strict";
  // Wide screens have room for the tag chips: show them unfolded. Phones keep them folded
  // so that the programme itself starts on the first screen.
  var box = document.querySelector("details.tag-box");
  if (box && window.matchMedia("(min-width: 48rem)").matches) {
    box.open = true;
  }
})();
